"""Deployment: SavedModel for TF Serving, TFLite for mobile.

- `export_saved_model(model, base)`: `base/<version>/`, written atomically,
  with the `serving_default` (early exit) and `full_depth` signatures on
  int32 `token_ids`/`padding_mask`/`segment_ids`, and with a tokenizer
  `serve_text` (and `serve_text_pair`) that tokenize in the graph. Reloads
  with TensorFlow alone (plus `tensorflow_text` for the text signatures).
- `export_tflite(saved_model_dir_or_model, path, quantize=...)`: a
  builtin-ops-only `.tflite` keeping the early-exit `WHILE` loop, checked
  for Flex ops and unfrozen variables.

Example:
```python
from dact_tf.export import export_saved_model, export_tflite

path = export_saved_model(model, "/models/sst2", tokenizer=tokenizer)
export_tflite(path, "/models/sst2.tflite", quantize="dynamic")
```
"""

from dact_tf.export.saved_model import build_serving_module
from dact_tf.export.saved_model import existing_versions
from dact_tf.export.saved_model import export_saved_model
from dact_tf.export.saved_model import output_keys
from dact_tf.export.saved_model import read_metadata
from dact_tf.export.text import TextPacker
from dact_tf.export.tflite import check_tflite_model
from dact_tf.export.tflite import convert_saved_model
from dact_tf.export.tflite import export_tflite
from dact_tf.export.tflite import tflite_ops
from dact_tf.export.tflite import tflite_signatures
