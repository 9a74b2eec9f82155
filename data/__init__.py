"""Files bundled with cnn-exposed, installed as the package ``cnn_exposed.data`` (see ``pyproject.toml``).

``demo/``: the demo model's weights and metadata, its images and masks (written by ``scripts/train_demo.py``);
``images/``: a few public-domain photos (``images/CREDITS.md``). Read them through ``cnn_exposed.bundled``.
"""
