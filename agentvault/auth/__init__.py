"""Authentication shared by the REST API and the WebSocket relay."""
