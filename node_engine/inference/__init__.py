"""Built-in inference worker (``python -m node_engine.inference.worker``) and its stats file.

`stats` is imported by the node engine (stdlib only, cheap); `worker` needs numpy and
onnxruntime and only runs as a task, never inside the engine.
"""
