"""tlhelpers: the tested code behind the transfer-learning notebooks.

Modules, in the order data flows: assets -> models -> freezing -> data -> training ->
evaluation -> plots; simulator builds on models and freezing.
"""

__version__ = "0.1.0"
