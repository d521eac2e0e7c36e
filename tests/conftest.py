"""Suite-wide settings.

`make test` runs the suite in two pytest-xdist workers, one per core; each worker gets one
intra-op thread, since two OpenMP threads per worker on two cores oversubscribe them and small
convs then run many times slower.
"""

import torch


def pytest_configure(config: object) -> None:
    torch.set_num_threads(1)
