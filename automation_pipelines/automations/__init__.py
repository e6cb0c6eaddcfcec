"""One folder per automation; each folder's `definitions.py` says what it contributes."""
