"""RealSRT (Peng et al., ECCV 2024): confidence-based iterative token generation for real-world SR.

Modules: ``model`` (generator/critic transformer and the bundled model), ``ccm`` (conditional
controlling module), ``sampling`` (mask schedule and iterative generation), ``method`` (the SR
method factory), ``train`` (training stages), ``figure`` (the per-step figure).
"""
