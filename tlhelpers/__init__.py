"""tlhelpers: the tested code behind the transfer-learning notebooks.

Modules, bottom to top; each imports only modules of lower layers (tests/test_layers.py checks):

0. ``checks`` (one integer check, one message) and ``serving`` (preprocess and predict with an
   exported bundle, by torch or onnxruntime alone; copied into every bundle): nothing else here.
1. ``files`` (file integrity, atomic writes, asset errors), ``runtime`` (seeds, random state,
   device, train/eval mode), ``compare`` (paired verdicts over seeds), ``figure_text``
   (alternative text for figures, from their titles, axes and legends): only ``checks`` below them.
2. ``data``: datasets by name, few-shot subsets, sample photos.
3. ``assets``: torchvision's weights offline; ``fetch`` provisions weights and data.
4. ``models``: load, find and replace heads, layer groups.
5. ``freezing``: freeze by name, BatchNorm policies, optimizer checks.
6. ``evaluation``: predict under eval + inference_mode, accuracy (``top1``, the one definition
   every accuracy in the package uses), confusion matrix.
6b. ``checkpoints``: write atomically, read with ``weights_only=True``, load all or nothing;
   ``robust`` (WiSE-FT interpolation, BatchNorm re-estimation, accuracy on shifted copies:
   notebooks 08 and 09, and ``protocol``).
7. ``training``: ``fit``, the feature cache.
8. ``plots``: figures. Beside it, the tools of notebooks 08 and 09: ``corruptions`` (shifted test
   sets), ``lora`` (low-rank adapters), ``similarity`` (linear CKA, weight change per block);
   ``protocol`` (fair
   comparisons: train / validation / test splits, one budget, choices on validation only);
   ``bundle`` (export a model as a folder torch or onnxruntime alone can serve).
9. ``simulator``: the freeze-toggle simulator (``FreezeSim``, pure PyTorch, and its widget);
   ``finetune``: the command-line job, one process or under ``torchrun``; ``predict``: top-k for
   image files from a bundle.
10. ``exercises``: the notebooks' exercise checks (``nb03.q2(...)`` says "Right" or "Not yet"
   with a hint); they may use any module below.
"""

__version__ = "0.3.0"
