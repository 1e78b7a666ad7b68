"""Jobs: the persistent queue (SQLAlchemy) and the worker processes that drain it."""
