"""The application whose models the migrations create."""
