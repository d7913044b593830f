"""The monitor: joins predictions with labels into metric windows per served version.

``python -m workers.monitor`` (``modelvc up`` starts one); see :mod:`workers.monitor.app`.
"""
