"""Job records, their store, and the scheduler that drives a Backend."""
