"""FeMaSR (Chen et al., ACM MM 2022): real-world SR by matching LR features to the codebook of a
high-resolution VQGAN prior (docs/femasr.md).

tokensr builds FeMaSR as UGTSR's network with UGTSR's extra modules switched off (``femasr``
layout, ``top_k=1``, no Align-Attention, no uncertainty head), so the authors' released weights
map one to one after ``tokensr convert`` (:mod:`tokensr.convert.femasr`).

- :mod:`.model`: :class:`FeMaSR` (a :class:`tokensr.methods.ugtsr.model.UGTSR` saved as
  ``model_type "femasr"``), its config helper and the authors' test-time padding;
- :mod:`.method`: ``build`` for ``tokensr upscale --method femasr --weights FOLDER``.
"""
