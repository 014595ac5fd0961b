"""Speed benchmarks, each a ratio measured in one run (`skinlesion bench train|inference|app`).

- `train`: the real training loop against the bare step;
- `inference`: a request against the bare forward, ONNX against eager, what the features add;
- `app`: the Gradio app against the library call, and a Space's cold start and memory.
"""
