"""UGTSR: uncertainty-guided, Top-k codebook matching SR on the frozen VQGAN (docs/ugtsr.md).

- :mod:`.model`: the network (LQ encoder, Top-k matching + fusion, Align-Attention, decoder
  fusion, uncertainty head) and its ``save_pretrained`` folder;
- :mod:`.losses`: ESU, UDL and the codebook (L2 + Gram) losses;
- :mod:`.train`: the two training stages (``ugtsr_esu``, ``ugtsr_udl``);
- :mod:`.matching`: matching accuracy of the LQ features against the HR codes;
- :mod:`.method`: ``build`` for ``tokensr upscale --method ugtsr`` and the benchmark.
"""
