"""ITER (Chen et al., AAAI 2024): iterative token evaluation and refinement for real-world SR.

Modules: ``lq_encoder`` (``E_l``, distortion removal in token space), ``refine`` (refinement
network ``phi_r`` and evaluation network ``phi_e``), ``sampling`` (mask schedule, start step
and adaptive inference, Algorithm 2), ``model`` (the bundled model), ``method`` (the SR method
factory), ``train`` (training tasks, Algorithm 1), ``figure`` (the per-step figure).
"""
