"""`python -m dact_tf ...` runs the `dact-tf` command line."""

from dact_tf.cli.main import run

if __name__ == "__main__":
    run()
