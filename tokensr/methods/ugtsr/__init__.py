"""UGTSR: uncertainty-guided, Top-k codebook matching SR on the frozen VQGAN (docs/ugtsr.md).

- :mod:`.model`: the network (config, presets, decoder fusion, uncertainty head) and its
  ``save_pretrained`` folder, wiring :mod:`.encoder` (the LQ encoder and its pyramid),
  :mod:`.fusion` (Top-k fusion) and :mod:`.align` (Align-Attention); the k-nearest-codes
  search is :func:`tokensr.nn.quantizer.knn_codes`;
- :mod:`.losses`: ESU, UDL and the codebook (L2 + Gram) losses;
- :mod:`.train`: the two training stages (``ugtsr_esu``, ``ugtsr_udl``);
- :mod:`.matching`: matching accuracy of the LQ features against the HR codes;
- :mod:`.method`: ``build`` for ``tokensr upscale --method ugtsr`` and the benchmark.
"""
