"""The Gradio app's logic as plain functions, testable without a server or a browser (`app.py` wires them)."""
