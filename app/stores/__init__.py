"""The two stores the pipeline passes data through: datasets (what a job trains on) and adapters (what it
produces, and what the engine serves). Each is a small interface with a local-filesystem implementation."""
