# What the round scripts (transformer_round.sh, vit_round.sh) share; sourced, not run.
# the hyper-parameter each method's lr is (the tempered sampler takes o-cola-ud-rms's precond_lr)
lr_key() {
  case "$1" in
    adamw) echo adamw_lr ;;
    muon) echo muon_lr ;;
    geotorch-orthogonal-adamw) echo geotorch_lr ;;
    ngpt-adam) echo ngpt_adam_lr ;;
    ngpt-s-cola-ud) echo ud_lr ;;
    ngpt-s-cola-ud-rms|ngpt-s-cola-ud-rms-bc|ngpt-s-cola-ud-rms-bc99) echo ngpt_rms_lr ;;
    o-cola-ud-rms|o-cola-ud-rms-tempered) echo precond_lr ;;
    o-spectral|o-spectral-project) echo spectral_lr ;;
    ngpt-s-adam|ngpt-s-adam-row) echo ngpt_adam_lr ;;
    ngpt-s-spectral) echo ngpt_spectral_lr ;;
    *) echo "no lr key for $1" >&2; exit 2 ;;
  esac
}
# what a method takes besides its own lr: nGPT's spectral step and its control run the Adam kind on
# the rest of the model at ngpt-adam's chosen lr (0.01), not the task's default 1e-3
rest_sets() {
  case "$1" in
    ngpt-s-spectral|ngpt-muon) echo "--set ngpt_adam_lr=0.01" ;;
  esac
}
run_method() {  # TASK METHOD LR OUT [more benchmark arguments]: one thread, skipped where it has run
  local task=$1 method=$2 lr=$3 out=$4 key; shift 4
  key=$(lr_key "$method") || return 2  # an unknown method stops the script (set -e), not a run without its lr
  [ -f "$out/$task/results.json" ] && return 0
  # shellcheck disable=SC2046
  python -m benchmarks run --task "$task" --preset quick --threads 1 --no-progress \
    --methods "$method" --set "$key=$lr" $(rest_sets "$method") --out "$out" "$@"
}
