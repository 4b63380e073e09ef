"""PostgreSQL: the connection pool, the migrations runner, the SQL files and the writes."""
