"""HTTP layer: thin routes over app.service.PeftServe."""
