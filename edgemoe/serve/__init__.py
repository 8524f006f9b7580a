"""`edgemoe serve`: an OpenAI-compatible HTTP server over the batched engine (``pip install
'edgemoe[serve]'``: Starlette + uvicorn). Only this package imports the HTTP stack."""
