"""chinchax: measure language-model scaling laws in JAX (Flax NNX, optax, orbax, grain)."""

from setuptools import find_packages, setup

setup(
    name='chinchax',
    version='0.1.0',
    description='JAX codebase for language-model scaling experiments',
    python_requires='>=3.11',
    packages=find_packages(include=['configs', 'configs.*', 'model', 'model.*', 'train', 'train.*',
                                    'scaling', 'scaling.*', 'launch', 'launch.*']),
    # Ranges tested: Python 3.11 (jax 0.10.2, flax 0.12.8) and Python 3.12 (jax 0.12.0.1, flax 0.12.12).
    install_requires=[
        'jax>=0.10.2,<0.13',
        'flax>=0.12.8,<0.13',
        'optax>=0.2.8,<0.3',
        'orbax-checkpoint>=0.12.8,<0.13',
        'grain>=0.2.18,<0.3',
        'ml-collections>=1.1,<2',
        'absl-py>=2.1,<3',
        'tensorboardX>=2.6,<3',
        'numpy>=2.0,<3',
        'scipy>=1.14,<2',
        'matplotlib>=3.9,<4',
        'sentencepiece>=0.2,<0.3',
        'etils[epath]>=1.9,<2',
        'pyarrow>=17',
        'tqdm>=4.66,<5',
    ],
    extras_require={
        # The tests read TensorBoard events with tensorboard's own reader (tested with 2.21).
        'test': ['pytest>=8,<10', 'tensorboard>=2.18,<3'],
        'tensorboard': ['tensorboard>=2.18,<3'],  # Only to view the logs: `tensorboard --logdir DIR`.
        # Only for scaling.aot (compile for TPU topologies on a CPU): the libtpu matching jax.
        'tpu-aot': ['jax[tpu]'],
        # Only for `launch.sweep --backend ray`; tested with ray 2.40.0 and 2.60.0 (Python 3.11).
        'ray': ['ray[default]>=2.40,<3'],
        # Only for a sweep --workdir in a GCS bucket (gs://, through etils epath): gcsfs. The tests
        # use a local stand-in for the bucket; not run against GCS from this project.
        'gcs': ['gcsfs>=2024.2,<2027'],
        # Only for scaling.quant (post-training quantization of a checkpoint); tested with 0.1.8.
        'quant': ['qwix>=0.1.8,<0.2'],
        # Only for scaling.export (HF safetensors, GGUF) and its tests' client, transformers on
        # PyTorch CPU; tested with gguf 0.19.0, safetensors 0.8.0, transformers 5.24.0 and torch
        # 2.13.0+cpu on Python 3.11 (a CPU wheel; on 3.12 the transformers tests skip).
        'export': ['gguf>=0.19,<0.20', 'safetensors>=0.8,<0.9',
                   'torch==2.13.0; python_version<"3.12"',
                   'transformers>=5.24,<6; python_version<"3.12"'],
        # Only for `make test-llamacpp`: runs the GGUF exports in llama.cpp; an sdist that compiles
        # llama.cpp (cmake, g++). Tested with 0.3.36.
        'llamacpp': ['llama-cpp-python>=0.3.36,<0.4'],
    },
)
