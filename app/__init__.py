"""The Gradio demo of clipsep: ``python -m app`` (or ``clipsep app``). See docs/app.md."""
