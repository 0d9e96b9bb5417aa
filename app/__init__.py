"""The Gradio demo of clipsep: ``python -m app`` from the project folder. See docs/app.md."""
