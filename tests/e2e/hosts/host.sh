#!/usr/bin/env bash
# Build, start and stop a real WebUI for the end-to-end tests: CPU only, random weights, pinned commits, offline.
#
#   tests/e2e/hosts/host.sh HOST build [STEP...]   HOST: a1111 forge neo classic reforge
#   tests/e2e/hosts/host.sh HOST start             returns once the API answers on 127.0.0.1:$PORT
#   tests/e2e/hosts/host.sh HOST stop              stops the pid in $HARNESS/webui.pid, nothing else
#   tests/e2e/hosts/host.sh HOST test [PYTEST ARGS] tests/e2e against it (started for the run, with the saved-defaults
#                                                  file and an API key the API tests look for, unless running)
#
# build steps (default: all, in this order; SKIP="a b" leaves some out): clone venv hf models ext, and for a1111
# also controlnet (sd-webui-controlnet; the forks have their own ControlNet built in). Not in the default: gguf
# (llama-cpp-python 0.3.36 in the WebUI's venv, for the gguf chat backend: built from source the first time,
# 20-40 min on 2 cores, then pip's wheel cache; the same CMake flags as .ci/run).
#
# env: HARNESS    (required) the folder one WebUI is built into: webui/ (the WebUI root), venv/, hf/, webui.pid,
#                 webui.log. One folder per host.
#      SOURCES    (clone, hf, controlnet steps) folder of git repositories named owner+name, bare or not, the git
#                 directory being SOURCES/owner+name or SOURCES/owner+name/repo. Nothing is fetched from the
#                 network but Python packages (pip as configured on the machine; torch==2.13.0 must resolve to
#                 the CPU build).
#      PORT       start: the API port (default 7860)
#      CKPT       start: the checkpoint loaded at start (default random-sd15.safetensors)
#      WITH_SDXL=1  build: also random-sdxl.safetensors (6.9 GB, ~14 GB of RAM once loaded) and its LoRA
#      MODELS_FROM  build: a folder holding random-sd15/random-sdxl.safetensors to symlink instead of building
#                 (e.g. another harness's webui/models/Stable-diffusion: build the checkpoints once)
#      EXTENSION  the checkout linked into webui/extensions/sd-webui-omost (default: this project's root)
#      EXTRA_ARGS start: more launch flags
#      HEAVY_LOCK optional lock file: building SDXL, and a WebUI started on an XL checkpoint (or with HEAVY=1),
#                 hold an exclusive flock on it, for machines where several SDXL jobs would not fit in RAM
#      PYTHON     the interpreter the venv is made with (default python3.11); SEED the random weights' seed
#      WAIT       start: seconds to wait for the API (default 900; 0 = return at once)
#      EVIDENCE   test: folder for the request log (requests.jsonl) and evidence files (default $HARNESS/evidence)
#      TEST_PYTHON  test: the interpreter running pytest (default the project's .venv/bin/python)
#      EDITOR_SHOTS test: also run tests/e2e/editor_in_host.py first, its screenshots and summary going there
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/../../.." && pwd)

say() { echo "== $*"; }
die() { echo "host.sh: $*" >&2; exit 1; }
usage() { sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 2 ] || usage
HOST=$1 ACTION=$2
shift 2
[ -n "${HARNESS:-}" ] || die "set HARNESS to the folder this host is built in (created if missing)"
mkdir -p "$HARNESS"
H=$(cd "$HARNESS" && pwd)
W=$H/webui
PYTHON=${PYTHON:-python3.11}

# ------------------------------------------------------------------------------------------------ pinned sources
ASSETS=6f7db241d2f8ba7457bac5ca9753331f0c266917            # AUTOMATIC1111/stable-diffusion-webui-assets
SD_REPO=cf1d67a6fd5ea1aa600c4df58e5b47da45f6bdbf           # Stability-AI/stablediffusion (A1111's and Classic's pin)
SGM=45c443b316737a4ab6e40413d7794a7f5657c19f               # Stability-AI/generative-models
KDIFF=ab527a9a6d347f364e3d185ba6d714e22d80cb3c             # crowsonkb/k-diffusion
HF_GUESS=84826248b49bb7ca754c73293299c4d4e23a548d          # lllyasviel/huggingface_guess (Forge)
FORGE=dfdcbab685e57677014f05a3309b48cc87383167             # lllyasviel/stable-diffusion-webui-forge
A1111=82a973c04367123ae98bd9abdf80d9eda9b910e2             # v1.10.1
CONTROLNET=56cec5b2958edf3b1807b7e7b2b1b5186dbd2f81        # Mikubill/sd-webui-controlnet (A1111 only)
CLASSIC=1f95d7170189cf93952aca122c1ee2f306a07e4c           # Haoming02/sd-webui-forge-classic, branch classic
REFORGE=3b56b268ad9158ee8b30900973b6ccda4ec22241           # Panchovix/stable-diffusion-webui-reForge, main
NEO=5692d2d1e6c293faf5486f7cb18c27c9a3faa758               # exo101/sd-webui-forge-neo-v3: a Neo tree under webui/

# Launch flags every host gets (CPU, offline, API on loopback); the CPU flag and the rest differ per host below.
COMMON_FLAGS="--skip-prepare-environment --skip-install --skip-torch-cuda-test --skip-version-check --api --server-name 127.0.0.1"
case $HOST in
  forge)   FLAGS="$COMMON_FLAGS --skip-python-version-check --no-download-sd-model --always-cpu" ;;
  a1111)   FLAGS="$COMMON_FLAGS --no-download-sd-model --use-cpu all --no-half --no-half-vae --precision full" ;;
  classic) FLAGS="$COMMON_FLAGS --skip-python-version-check --no-download-sd-model --always-cpu" ;;
  reforge) FLAGS="$COMMON_FLAGS --skip-python-version-check --no-download-sd-model --always-cpu" ;;
  neo)     FLAGS="$COMMON_FLAGS --skip-python-version-check --cpu" ;;   # Neo: --cpu; no --no-download-sd-model
  *) die "unknown HOST '$HOST' (a1111 forge neo classic reforge)" ;;
esac

# ------------------------------------------------------------------------------------------------ git helpers
is_git_dir() { [ -d "$1/.git" ] || { [ -f "$1/HEAD" ] && [ -d "$1/objects" ]; }; }
src_dir() {  # OWNER+NAME... -> the first one found under $SOURCES
  [ -n "${SOURCES:-}" ] || die "set SOURCES to the folder of source repositories (owner+name)"
  local n
  for n in "$@"; do
    if is_git_dir "$SOURCES/$n/repo"; then echo "$SOURCES/$n/repo"; return 0; fi
    if is_git_dir "$SOURCES/$n"; then echo "$SOURCES/$n"; return 0; fi
  done
  die "none of [$*] is a git repository under SOURCES=$SOURCES"
}

# checkout_at DEST COMMIT "PATTERNS" OWNER+NAME...: clone once, check the commit out as the local branch `pinned`
# (a detached HEAD makes the Extensions tab log a GitPython traceback). PATTERNS are extra sparse-checkout lines
# (e.g. "/webui/ !/webui/extensions/"); files whose blobs the source lacks are left out the same way.
checkout_at() {
  local dest=$1 commit=$2 patterns=$3 src tree miss err
  shift 3
  if [ ! -e "$dest/.git" ]; then
    src=$(src_dir "$@")
    git clone -q --no-checkout "$src" "$dest"
  fi
  git -C "$dest" cat-file -e "$commit^{commit}" 2>/dev/null || git -C "$dest" fetch -q origin
  git -C "$dest" cat-file -e "$commit^{commit}" 2>/dev/null || die "commit $commit is not in $dest's source"
  tree=$(git -C "$dest" ls-tree -r "$commit")
  miss=$(printf '%s\n' "$tree" | awk '$2 == "blob" {print $3}' | git -C "$dest" cat-file --batch-check |
         awk '$2 == "missing" {print $1}')
  if [ -n "$miss$patterns" ]; then
    [ -z "$miss" ] || echo "   $(basename "$dest"): $(printf '%s\n' "$miss" | wc -l) file(s) missing from the source, left out"
    git -C "$dest" config core.sparseCheckout true
    git -C "$dest" config core.sparseCheckoutCone false
    mkdir -p "$dest/.git/info"
    { if [ -n "$patterns" ]; then tr ' ' '\n' <<<"$patterns"; else echo '/*'; fi
      [ -z "$miss" ] || printf '%s\n' "$tree" |
        awk -F'\t' 'NR == FNR {m[$1]; next} {split($1, a, " "); if (a[3] in m) print "!/" $2}' <(printf '%s\n' "$miss") -
    } >"$dest/.git/info/sparse-checkout"
  fi
  if [ "$(git -C "$dest" symbolic-ref -q --short HEAD)" != pinned ] ||
     [ "$(git -C "$dest" rev-parse HEAD)" != "$(git -C "$dest" rev-parse "$commit^{commit}")" ]; then
    # git reports each left-out blob as an "invalid object" while writing the index: those lines are dropped
    err=$(git -C "$dest" checkout -q -B pinned "$commit" 2>&1) || { echo "$err" >&2; return 1; }
    printf '%s\n' "$err" | grep -v -e '^error: invalid object ' -e '^$' >&2 || true
  fi
  echo "   $(basename "$dest") at $(git -C "$dest" rev-parse --short HEAD)"
}

# ------------------------------------------------------------------------------------------------ build helpers
ALL_STEPS="clone venv hf models ext"
[ "$HOST" != a1111 ] || ALL_STEPS="$ALL_STEPS controlnet"
STEPS=${*:-$ALL_STEPS}
want() {
  local s
  for s in $STEPS; do
    case " $ALL_STEPS gguf " in *" $s "*) ;; *) [ "$ACTION" != build ] || die "unknown step '$s' (steps: $ALL_STEPS gguf)" ;; esac
  done
  for s in ${SKIP:-}; do [ "$s" = "$1" ] && return 1; done
  for s in $STEPS; do [ "$s" = "$1" ] && return 0; done
  return 1
}
with_lock() {
  if [ -n "${HEAVY_LOCK:-}" ]; then say "waiting for $HEAVY_LOCK"; flock "$HEAVY_LOCK" "$@"; else "$@"; fi
}
VPY=$H/venv/bin/python
# pip install -r FILE into the venv unless that exact file was installed before (a stamp kept in the venv)
pip_once() {  # FILE [pip args...]
  local req=$1 stamp
  shift
  stamp="$H/venv/.installed-$(basename "$req")"
  if [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then echo "   $(basename "$req"): already installed"; return 0; fi
  # (the machine's pip configuration may name index folders it lacks: those warnings are dropped)
  "$VPY" -m pip install -q "$@" -r "$req" 2> >(grep -v '^WARNING: Location .* is ignored' >&2)
  cp "$req" "$stamp"
}
# The host's own pins, with the CPU torch 2.13.0 and its torchvision 0.28.0, and setuptools 80.9.0 (torch 2.13
# needs >= 77; 80.9 still ships pkg_resources, which pytorch_lightning imports). REQ_EDIT: more sed expressions.
host_requirements() {  # SRC_FILE OUT_FILE EXTRA_LINES
  # (a file may end without a newline: reForge's does)
  { sed -e 's/^torch *$/torch==2.13.0/' -e 's/^setuptools.*/setuptools==80.9.0/' ${REQ_EDIT:-} "$1"; echo; } >"$2"
  grep -q '^setuptools' "$2" || echo 'setuptools==80.9.0' >>"$2"
  printf 'torchvision==0.28.0\n%s' "$3" >>"$2"
}
# The random checkpoints: symlinked from MODELS_FROM when it has them, else built from the host's own model code.
checkpoint() {  # KIND(sd15|sdxl)
  local dir=$W/models/Stable-diffusion name="random-$1.safetensors"
  mkdir -p "$dir"
  if [ -e "$dir/$name" ]; then echo "   $name: present"; return 0; fi
  if [ -n "${MODELS_FROM:-}" ] && [ -s "$MODELS_FROM/$name" ]; then
    ln -s "$(cd "$MODELS_FROM" && pwd)/$name" "$dir/$name"; echo "   $name: linked from $MODELS_FROM"; return 0
  fi
  say "build $name"
  if [ "$1" = sdxl ]; then with_lock "$VPY" -W ignore "$HERE/random_models.py" sdxl "$dir/$name" --webui "$W"
  else "$VPY" -W ignore "$HERE/random_models.py" sd15 "$dir/$name" --webui "$W"; fi
}
small_model() {  # KIND OUT [builder args...]: LoRA / ControlNet / VAE-approx, built once
  local kind=$1 out=$2
  shift 2
  if [ -s "$out" ]; then echo "   $(basename "$out"): present"; return 0; fi
  mkdir -p "$(dirname "$out")"
  "$VPY" -W ignore "$HERE/random_models.py" "$kind" "$out" "$@"
}

ipadapter() {  # LAYOUT(forge|a1111): tests/e2e/make_ipadapter_models.py (skips the files that exist)
  "$VPY" "$PROJECT/tests/e2e/make_ipadapter_models.py" --host "$1" --webui "$W" $([ "${WITH_SDXL:-0}" != 1 ] || echo --sdxl)
}

# ------------------------------------------------------------------------------------------------ build
build() {
  say "$HOST: building into $H (steps: $STEPS${SKIP:+, skipping $SKIP})"
  if want clone; then
    say "clone"
    case $HOST in
      forge)
        checkout_at "$W" $FORGE "" lllyasviel+stable-diffusion-webui-forge
        checkout_at "$W/repositories/huggingface_guess" $HF_GUESS "" lllyasviel+huggingface_guess ;;
      a1111)
        checkout_at "$W" $A1111 "" AUTOMATIC1111+stable-diffusion-webui CoderBotics-ai+stable-diffusion-webui
        checkout_at "$W/repositories/stable-diffusion-stability-ai" $SD_REPO "" Stability-AI+stablediffusion
        checkout_at "$W/repositories/generative-models" $SGM "" Stability-AI+generative-models
        checkout_at "$W/repositories/k-diffusion" $KDIFF "" crowsonkb+k-diffusion ;;
      classic)
        checkout_at "$W" $CLASSIC "" Haoming02+sd-webui-forge-classic
        checkout_at "$W/repositories/stable-diffusion-stability-ai" $SD_REPO "" Stability-AI+stablediffusion
        checkout_at "$W/repositories/generative-models" $SGM "" Stability-AI+generative-models ;;
      reforge)
        # reForge pins joypaul162/Stability-AI-stablediffusion f16630a9; Stability-AI's cf1d67a6 stands in
        checkout_at "$W" $REFORGE "" Panchovix+stable-diffusion-webui-reForge
        checkout_at "$W/repositories/stable-diffusion-stability-ai" $SD_REPO "" Stability-AI+stablediffusion
        checkout_at "$W/repositories/generative-models" $SGM "" Stability-AI+generative-models
        checkout_at "$W/repositories/k-diffusion" $KDIFF "" crowsonkb+k-diffusion ;;
      neo)
        # the Neo tree is webui/ of that repository; its webui/extensions/ holds the tree's own third-party
        # extensions (not Neo's, and partly missing from the snapshot): left out. webui/ is a link into the clone.
        checkout_at "$H/neo-tree" $NEO "/webui/ !/webui/extensions/*" exo101+sd-webui-forge-neo-v3
        [ -e "$W" ] || ln -s neo-tree/webui "$W"
        mkdir -p "$W/extensions" ;;
    esac
    [ "$HOST" = neo ] || checkout_at "$W/repositories/stable-diffusion-webui-assets" $ASSETS "" \
      AUTOMATIC1111+stable-diffusion-webui-assets
  fi

  if want venv; then
    say "venv"
    [ -x "$VPY" ] || "$PYTHON" -m venv "$H/venv"
    case $HOST in
      # joblib: Forge's built-in soft-inpainting script imports it and Forge's pins lack it
      forge) host_requirements "$W/requirements_versions.txt" "$H/requirements-host.txt" $'joblib\n' ;;
      # clip-anytorch: k-diffusion imports `clip`, which A1111's launcher would install from a GitHub zip
      a1111) host_requirements "$W/requirements_versions.txt" "$H/requirements-host.txt" $'clip-anytorch==2.6.0\nftfy\nregex\ntqdm\n' ;;
      # Classic has only requirements.txt, with setuptools unpinned (a current one has no pkg_resources)
      classic) host_requirements "$W/requirements.txt" "$H/requirements-host.txt" "" ;;
      # reForge names a pydantic 1.10.15 wheel by URL (Panchovix/pydantic-fixreforge): PyPI's stands in; its
      # k-diffusion copy (k_diff/k_diffusion/evaluation.py) imports `clip`, which its launcher installs from a
      # GitHub zip (modules/launch_utils.py prepare_environment): clip-anytorch stands in, as for A1111
      reforge) REQ_EDIT="-e s|^https://.*pydantic-1.10.15.*|pydantic==1.10.15|" \
                 host_requirements "$W/requirements_versions.txt" "$H/requirements-host.txt" $'clip-anytorch==2.6.0\n' ;;
      # Neo's launcher installs gradio first, then its requirements (Pillow 12 past gradio 4.40's pin: pip warns,
      # it runs); audioop-lts is for Python >= 3.13 only
      neo) printf 'gradio==4.40.0\ngradio_rangeslider==0.0.8\n' >"$H/requirements-gradio.txt"
           pip_once "$H/requirements-gradio.txt"
           REQ_EDIT="-e /^audioop-lts/d" host_requirements "$W/requirements.txt" "$H/requirements-host.txt" "" ;;
    esac
    pip_once "$H/requirements-host.txt"
    "$VPY" "$HERE/patch_torchvision.py"
    "$VPY" -W ignore -c "import torch, torchvision; print('   torch', torch.__version__, 'torchvision', torchvision.__version__)"
  fi

  if want hf; then
    # the ldm/sgm text encoders load openai/clip-vit-large-patch14's config and tokenizer by name: an offline cache
    say "hf"
    mkdir -p "$H/hf"
    case $HOST in a1111|classic|reforge)
      "$VPY" "$HERE/hf_cache.py" "$H/hf" "$(src_dir lllyasviel+stable-diffusion-webui-forge)" $FORGE ;; esac
  fi

  if want models; then
    say "models"
    export HF_HOME=$H/hf HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    local M=$W/models cn=$W/models/ControlNet
    checkpoint sd15
    if [ "${WITH_SDXL:-0}" = 1 ]; then
      checkpoint sdxl
      mkdir -p "$M/Lora"
      [ -s "$M/Lora/random_lora_xl.safetensors" ] || "$VPY" "$PROJECT/tests/e2e/make_sdxl_lora.py" \
        --ckpt "$M/Stable-diffusion/random-sdxl.safetensors" --out "$M/Lora/random_lora_xl.safetensors"
    fi
    small_model lora "$M/Lora/random_lora.safetensors"
    small_model vaeapprox-sdxl "$M/VAE-approx/vaeapprox-sdxl.pt"   # else SDXL live previews download it
    # reForge downloads models/VAE-approx/model.pt (SD1.5 previews) at the first job: A1111 ships that file
    if [ "$HOST" = reforge ] && [ ! -s "$M/VAE-approx/model.pt" ]; then
      git --git-dir="$(src_dir AUTOMATIC1111+stable-diffusion-webui CoderBotics-ai+stable-diffusion-webui)" \
        show "$A1111:models/VAE-approx/model.pt" >"$M/VAE-approx/model.pt"
    fi
    [ "$HOST" != a1111 ] || cn=$W/extensions/sd-webui-controlnet/models
    [ "$HOST" != a1111 ] || [ -d "$W/extensions/sd-webui-controlnet" ] || cn=   # ControlNet comes with its step
    [ -z "$cn" ] || small_model cnet "$cn/control_v11p_sd15_canny_random.safetensors" \
      --ckpt "$M/Stable-diffusion/random-sd15.safetensors"
    # random IP-Adapters and their CLIP vision tower, where the forks' built-in sd_forge_ipadapter reads them
    [ "$HOST" = a1111 ] || ipadapter forge
  fi

  if want ext; then
    say "ext"
    local ext dest=$W/extensions/sd-webui-omost
    ext=$(cd "${EXTENSION:-$PROJECT}" && pwd)
    [ -f "$ext/scripts/omost.py" ] || die "EXTENSION=$ext is not an sd-webui-omost checkout (no scripts/omost.py)"
    if [ -e "$dest" ] && [ ! -L "$dest" ]; then die "$dest exists and is not a symlink; move it away first"; fi
    mkdir -p "$W/extensions"
    ln -sfn "$ext" "$dest"
    echo "   extensions/sd-webui-omost -> $ext"
  fi

  if want controlnet; then
    # sd-webui-controlnet's install.py is skipped (--skip-install): its requirements are installed here holding
    # A1111's pins, except mediapipe 0.10.14 (1.x has no mp.solutions) and so protobuf 4.25.x (A1111 pins 3.20.0)
    say "controlnet"
    local cnd=$W/extensions/sd-webui-controlnet
    checkout_at "$cnd" $CONTROLNET "" Mikubill+sd-webui-controlnet
    { cat "$cnd/requirements.txt"; echo "mediapipe==0.10.14"; } >"$H/requirements-controlnet.txt"
    { grep -v -i '^protobuf' "$H/requirements-host.txt"
      "$VPY" -c "import importlib.metadata as m; print('huggingface-hub==' + m.version('huggingface-hub'))"
    } >"$H/constraints-controlnet.txt"
    pip_once "$H/requirements-controlnet.txt" -c "$H/constraints-controlnet.txt"
    small_model cnet "$cnd/models/control_v11p_sd15_canny_random.safetensors" \
      --ckpt "$W/models/Stable-diffusion/random-sd15.safetensors"
    ipadapter a1111
  fi
  if want gguf; then
    say "gguf"
    printf 'llama-cpp-python==0.3.36\n' >"$H/requirements-gguf.txt"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF" \
      pip_once "$H/requirements-gguf.txt"
  fi
  say "$HOST ready in $H; start it with: HARNESS=$H PORT=... $0 $HOST start"
}

# ------------------------------------------------------------------------------------------------ start / stop
running() { [ -f "$H/webui.pid" ] && kill -0 "$(cat "$H/webui.pid")" 2>/dev/null; }

start() {
  local port=${PORT:-7860} ckpt=${CKPT:-random-sd15.safetensors} wait=${WAIT:-900} t=0
  [ -x "$VPY" ] && [ -f "$W/launch.py" ] || die "no $HOST in $H: run '$0 $HOST build' first"
  ! running || die "already running: pid $(cat "$H/webui.pid") (stop it with: HARNESS=$H $0 $HOST stop)"
  # offline, no telemetry, loopback never through a proxy; Hugging Face lookups stay in $H/hf
  export GRADIO_ANALYTICS_ENABLED=False HF_HOME="$H/hf" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1 no_proxy='*' NO_PROXY='*'
  unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY
  mkdir -p "$H/hf"
  if [ -n "${HEAVY_LOCK:-}" ] && { [ "${HEAVY:-0}" = 1 ] || [[ ${ckpt,,} == *xl* ]]; }; then
    exec 9>>"$HEAVY_LOCK"   # the WebUI inherits the locked descriptor: the lock lasts until it exits
    say "waiting for $HEAVY_LOCK"
    flock 9
  fi
  cd "$W"
  # shellcheck disable=SC2086  # FLAGS and EXTRA_ARGS are lists of flags
  nohup "$VPY" -u launch.py $FLAGS --port "$port" --ckpt "models/Stable-diffusion/$ckpt" ${EXTRA_ARGS:-} \
    >"$H/webui.log" 2>&1 </dev/null &
  echo $! >"$H/webui.pid"
  exec 9>&- 2>/dev/null || true
  echo "$HOST starting: pid $(cat "$H/webui.pid"), http://127.0.0.1:$port, log $H/webui.log"
  [ "$wait" != 0 ] || return 0
  until curl -sf --noproxy '*' -o /dev/null "http://127.0.0.1:$port/sdapi/v1/sd-models"; do
    if ! running; then tail -n 40 "$H/webui.log" >&2; die "$HOST exited during start-up (log: $H/webui.log)"; fi
    [ $t -lt "$wait" ] || { tail -n 20 "$H/webui.log" >&2; die "API not up after $wait s (still starting: pid $(cat "$H/webui.pid"))"; }
    sleep 2; t=$((t + 2))
  done
  echo "$HOST up on http://127.0.0.1:$port after ${t} s"
}

stop() {
  local f=$H/webui.pid pid
  [ -f "$f" ] || { echo "no $f: nothing to stop"; return 0; }
  pid=$(cat "$f")
  [[ $pid =~ ^[0-9]+$ ]] || die "$f does not hold a pid"
  if ! kill -0 "$pid" 2>/dev/null; then echo "pid $pid has already exited"; rm -f "$f"; return 0; fi
  kill "$pid"
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; echo "killed $pid (SIGKILL after 30 s)"; else echo "stopped $pid"; fi
  rm -f "$f"
}

# tests/e2e (tests/e2e/conftest.py) against this host. The image guidance tests need a tower folder that is the
# WebUI's omost_vision_path setting (path settings are out of the API's reach): config.json gets one under models/,
# with the tower downloads off.
e2e() {
  local port=${PORT:-7860} ckpt=${CKPT:-random-sd15.safetensors} ev=${EVIDENCE:-$H/evidence} started=0 rc=0
  local key="omost-e2e-key-$$" vision=$W/models/omost-e2e-vision py=${TEST_PYTHON:-$PROJECT/.venv/bin/python}
  mkdir -p "$ev" "$vision"
  "$VPY" - "$W/config.json" "$vision" "$W/modules/launch_utils.py" <<'PY'
import json, os, re, sys
path, vision, launch_utils = sys.argv[1:]
config = json.load(open(path, encoding='utf-8')) if os.path.exists(path) else {}
config.update({'omost_vision_path': vision, 'omost_vision_url_768': '', 'omost_vision_url_1280': ''})
# Neo (launch_utils.py: verify_version) stops at start-up asking for Enter unless config.json carries its
# VERSION_UID, which it writes itself only into a config.json it creates
uid = re.search(r'^VERSION_UID\b.*=\s*"([^"]+)"', open(launch_utils, encoding='utf-8').read(), re.M)
if uid:
    config.setdefault('VERSION_UID', uid.group(1))
json.dump(config, open(path, 'w', encoding='utf-8'), indent=4)
PY
  (cd "$PROJECT" && "$py" -m tests.e2e.ui_config "$H/ui-config-e2e.json")
  if ! running; then
    EXTRA_ARGS="${EXTRA_ARGS:-} --ui-config-file $H/ui-config-e2e.json --omost-api-key $key" start
    started=1
  fi
  local envs=(OMOST_E2E_URL="http://127.0.0.1:$port" OMOST_E2E_HOST="$HOST" OMOST_E2E_CKPT="$ckpt"
              OMOST_E2E_WEBUI_LOG="$H/webui.log" OMOST_E2E_VISION_DIR="$vision" OMOST_E2E_EVIDENCE="$ev"
              OMOST_E2E_LOG="$ev/requests.jsonl" no_proxy='*' NO_PROXY='*')
  [ $started = 0 ] || envs+=(OMOST_E2E_UI_CONFIG="$H/ui-config-e2e.json" OMOST_E2E_API_KEY="$key")
  if [ -n "${EDITOR_SHOTS:-}" ]; then  # the accordion, chat and region editor in Chromium first (screenshots)
    (cd "$PROJECT" && env "${envs[@]}" "$py" tests/e2e/editor_in_host.py "$EDITOR_SHOTS") || rc=$?
  fi
  local paths=(tests/e2e) a
  for a in "$@"; do case $a in tests/*) paths=() ;; esac; done  # test files named: only those, in that order
  (cd "$PROJECT" && env "${envs[@]}" "$py" -m pytest -q "${paths[@]}" "$@") || rc=$?
  [ $started = 0 ] || stop
  return $rc
}

main() {
  case $ACTION in
    build) build ;;
    start) start ;;
    stop) stop ;;
    test) e2e "$@" ;;
    *) usage ;;
  esac
}
main "$@"; exit  # on one line: bash reads a script as it runs it, so an edit made meanwhile cannot run
