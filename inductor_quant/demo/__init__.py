"""The main job (``python -m inductor_quant.demo``, the ``inductor-quant-demo`` console script): see ``__main__``."""
