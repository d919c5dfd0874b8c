"""OpenAI's fine-tuning API (`/v1/fine_tuning/jobs`, `/v1/files`, `/v1/models`) on the same
jobs as the llama-stack face: `llama-stack-kfp serve openai --config run.yaml`.

A front end of its own beside api/: it imports neither llama-stack nor api/, and reaches the
jobs through service/ (README "Drop-in for OpenAI fine-tuning").
"""
