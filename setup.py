"""Setup script for dact_tf."""

import pathlib

import setuptools

HERE = pathlib.Path(__file__).parent
version = {}
exec((HERE / "dact_tf" / "version.py").read_text(), version)

setuptools.setup(
    name="dact-tf",
    version=version["__version__"],
    description=(
        "Differentiable Adaptive Computation Time (DACT-BERT) for Keras 3 / "
        "TensorFlow Transformer encoders: learned, guaranteed early exit."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10,<3.13",
    # Namespace packages too: the data folders (dact_tf/resources/...) are
    # packages of package data, which setuptools warns about when unlisted.
    packages=setuptools.find_namespace_packages(
        include=["dact_tf", "dact_tf.*"], exclude=["*.__pycache__"]),
    include_package_data=True,
    package_data={"dact_tf": ["resources/**/*"]},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<4",
        "keras-hub>=0.32,<0.33",
        "tensorflow-text>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10,<5",
        "absl-py>=2.1,<3",
        "ai-edge-litert>=2.3,<2.4",
        # tf.summary needs TensorBoard, which tensorflow 2.21 no longer pulls.
        "tensorboard>=2.20",
        # keras-hub's Hugging Face checkpoint loader and tfds need these at
        # run time but do not declare them.
        "safetensors>=0.4",
        "importlib_resources>=6",
        "numpy>=1.26",
        # `dact-tf evaluate --plot_dir` and the benchmark plots.
        "matplotlib>=3.8",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "tensorflow-serving-api>=2.21,<2.22",
        ],
        # Kept for old install commands: matplotlib is now a dependency.
        "bench": [],
    },
    entry_points={"console_scripts": ["dact-tf=dact_tf.cli.main:run"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
