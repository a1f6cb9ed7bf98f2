"""Small helpers every room may use: files and atomic writes, progress bars, quiet output.

Nothing here imports another part of dact_tf.
"""
