"""Detection data: the synthetic shapes set, COCO JSON -> TFRecord conversion,
and checks of user datasets. Importing this package does not load TensorFlow."""
from spinesearch.data.dataset import (DatasetPaths, ensure_synthetic,
                                      user_dataset)
