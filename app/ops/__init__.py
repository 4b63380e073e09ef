"""Running the service: the CLI, the terminal view, embedded servers, the process runner."""
