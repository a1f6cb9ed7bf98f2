"""Data for dact_tf: GLUE and custom text files, tf.data pipelines, metrics.

- `glue`: GLUE task specs, strict local TSV parsing, and `load_glue`, which
  serves tensorflow-datasets' `glue/<task>` (online) and local GLUE files
  (validated, then stored through tfds) as the same feature-dict datasets.
- `tsv`: strict TSV/CSV readers and `TextExamples` for custom data.
- `pipeline`: `(texts[, pairs], labels)` -> batched, tokenized
  `tf.data.Dataset`s of `({"token_ids", "segment_ids", "padding_mask"},
  labels)`.
- `metrics`: accuracy, F1, Matthews correlation, Pearson, Spearman and
  `task_metrics`, in NumPy.
- `network`: the connectivity probe that makes online routes fail fast.
- `builtin_sst2_dir()`: the SST-2 sample shipped with the package.
"""

from dact_tf.data.glue import GLUE_TASKS
from dact_tf.data.glue import GlueTask
from dact_tf.data.glue import builtin_sst2_dir
from dact_tf.data.glue import dataset_to_examples
from dact_tf.data.glue import glue_task
from dact_tf.data.glue import load_glue
from dact_tf.data.glue import read_glue
from dact_tf.data.glue import read_glue_file
from dact_tf.data.glue import store_as_tfds
from dact_tf.data.metrics import accuracy
from dact_tf.data.metrics import f1_score
from dact_tf.data.metrics import matthews_corrcoef
from dact_tf.data.metrics import pearson
from dact_tf.data.metrics import spearman
from dact_tf.data.metrics import task_metrics
from dact_tf.data.pipeline import glue_dataset
from dact_tf.data.pipeline import keep_min_tokens
from dact_tf.data.pipeline import make_dataset
from dact_tf.data.pipeline import make_dataset_from_examples
from dact_tf.data.pipeline import make_dataset_from_features
from dact_tf.data.pipeline import token_counts
from dact_tf.data.tsv import TextExamples
from dact_tf.data.tsv import read_text_file
