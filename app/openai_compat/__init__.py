"""The OpenAI-compatible face (/v1): OpenAI's fine-tuning, files, models and chat-completion objects mapped onto
peftserve's own jobs, datasets and adapters. No FastAPI here: app/api/routes/v1.py wraps these functions."""
