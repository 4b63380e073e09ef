"""Reading the numbers back: history parameters, history and live reads, the query views."""
