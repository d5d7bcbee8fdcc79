"""The embedded default language model: Hugging Face files shipped as package data.

The folder holds ``config.json``, ``model.safetensors``, the tokenizer files, the list of
held-out standard-library files and the model card. It is a package only so that the
files travel with the distribution; retrain it with ``python -m training.default_model``.
"""
