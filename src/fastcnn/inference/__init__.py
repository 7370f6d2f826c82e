"""Inference: a trained model's forward planned once per input shape (InferenceSession)."""
from fastcnn.inference.session import InferenceSession

__all__ = ["InferenceSession"]
