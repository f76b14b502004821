#!/usr/bin/env bash
# Side-by-side benchmark of cairn against restic, borg, rustic and bupstash (each peer only
# when installed): every tool backs up the same data in one sitting — a first backup of
# version A, the same backup again unchanged, a backup of version B from the same path — then
# restores the latest snapshot and reads it back through its FUSE mount. Each timed step runs
# with a cold page cache under /usr/bin/time; the script prints one table (wall time, CPU
# time, peak RSS, repository size, cairn/peer wall ratio; the median of --runs runs) and writes
# it as Markdown to --out. Floors put the numbers in scale: cp -a, tar | wc -c cold and warm
# and find on version B; a cold tar of version A, and cairn's in-memory pipeline on version A
# (`cairn pipeline-speed`: chunk+hash+compress+seal with the files already loaded). For cairn
# only, rows 6a-6c time a foreground job (tar | gzip -1 | wc -c of A's drivers/, or of all of
# A when it has none) alone, during `cairn backup --low-priority` of B, and during a plain
# `cairn backup` of B; rows 7a-7b sync A over loopback against an rsync daemon. The notes give cairn's target ratios: first backup vs floor, restore vs
# cp -a, mount read vs restore, and the foreground job's slowdowns.
#
# With --s3 it measures the same tools on an S3-compatible object store instead: Garage on free
# loopback ports (scripts/garage.sh provides the binary; one node, or with --s3-nodes 3 a
# cluster with replication_factor 3), and for cairn, restic (its s3 backend) and rustic (its
# OpenDAL s3 backend) a first backup of version A, the same backup again unchanged, a backup of
# version B, a restore and a read of the latest snapshot through the mount with tar, with the
# S3 requests of each step by type from Garage's own counters.
#
#   scripts/bench.sh --quick            # small generated tree, one run: about a minute
#   scripts/bench.sh                    # two Debian kernel source trees (6.1 -> 6.12), 3 runs
#   scripts/bench.sh --data DIR         # DIR, then a copy of it with ~5% of files modified
#   scripts/bench.sh --install-peers    # apt-get restic + borg, cargo install rustic + bupstash
#   scripts/bench.sh --s3               # into one local Garage node (cairn, restic, rustic)
#   scripts/bench.sh --s3 --s3-nodes 3  # into a local 3-node Garage cluster
#
# Needs root (it drops the page cache before every timed step, and mounts FUSE filesystems).
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------

usage() {
    cat <<'EOF'
Usage: scripts/bench.sh [OPTIONS]

  --quick            small generated tree (2,000 files, ~55 MB) and its modified copy; 1 run
  --data DIR         benchmark DIR (version A) and a copy with ~5% of files modified (version B)
                     (default: Debian's linux-source-6.1 -> linux-source-6.12, cached under
                     ${CAIRN_BENCH_DATA:-/work/data})
  --runs N           runs per tool; each cell is the median (default 3, with --quick 1)
  --out FILE         Markdown results (default ./bench-results.md; the full log goes next to it
                     as FILE with .log instead of .md)
  --work DIR         where the work directory (repositories, caches, restores) is made: a new
                     cairn-bench.XXXXXX inside DIR, removed at the end; a real disk, not tmpfs
                     (default: under ${CAIRN_BENCH_DATA:-/work/data}, or /tmp)
  --tools LIST       comma-separated subset of cairn,restic,borg,rustic,bupstash (default: all)
  --cairn PATH       cairn binary to use (default: target/release/cairn, built when missing or
                     older than the sources)
  --timeout SECS     give up on one step after SECS (default 7200, with --quick 600)
  --no-verify        skip the (untimed) check that the first run's restore matches the source
  --keep             keep the work directory
  --install-peers    install restic, borg (apt-get), rustic and bupstash (cargo install; these
                     compile for several minutes), then exit
  --s3               the S3 rows instead of the rows below: cairn, restic and rustic against
                     Garage on loopback (S3 rows, below)
  --s3-nodes N       Garage nodes for --s3: 1 (default) or 3 (replication_factor 3,
                     consistency_mode consistent; requests are counted at the node the tools
                     talk to, Garage CPU is all nodes')
  --s3-delay MS      for --s3: the tools reach Garage through a TCP proxy on loopback that
                     holds every byte MS milliseconds each way (a link with 2*MS round trips;
                     run once with 0 to compare: the proxy's own cost is in both)
  -h, --help         this text

Rows (each: wall s, CPU s, peak RSS, repository size; median of the runs):
  1-3    backups: A (first), A again (unchanged), B; 4 restore latest; 5a/5b mount: tar, find
  7a-7b  cairn against rsync over loopback: `cairn serve --source` + `cairn sync --delete`
         and an rsync daemon + `rsync -a --delete --stats`, copying A into an empty directory
         (7a), then updating the copy after 1% of A's files changed (7b); the notes give the
         bytes each moved
  6a-6c  cairn only: a foreground job (tar cf - DIR | gzip -1 | wc -c, DIR = A's drivers/, or
         all of A when it has none; cold cache) alone, during `cairn backup --low-priority`
         of B into a fresh repository, and during a plain `cairn backup` of B
  floors cp -a, tar (cold, warm) and find on B; tar (cold) on A; the in-memory pipeline
         (`cairn pipeline-speed --json A`: wall is the pipeline time only, without loading
         the files; CPU and RSS are the whole command's)
The notes add cairn's target ratios: first backup / max(cold tar of A, in-memory pipeline)
(<= 1.5), restore / cp -a (<= 1.2), restore / mount tar read (>= 0.7), and the foreground
job's slowdown during the low-priority backup (< 10%) and during the plain one.

S3 rows (--s3; each: wall s, CPU s, peak RSS, Garage's CPU s, S3 requests by type; median of
the runs): s1 backup A (first), s2 backup A again (unchanged), s3 backup B, s4 restore
latest, s5 mount: read latest with tar (tools with a mount; wall is tar's, CPU and RSS the
daemon's and tar's, requests from the mount's start to its end). The repositories are
s3:http://127.0.0.1:PORT/bench/TOOL-RUN in Garage (scripts/garage.sh; $CAIRN_GARAGE
overrides), credentials in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (rustic: OPENDAL_*),
region "garage". Requests are the step's delta of Garage's api_s3_request_counter per endpoint,
grouped GET (GetObject), PUT (PutObject, UploadPart, CopyObject, multipart create/complete),
LIST (ListObjects*, ListBuckets, ListMultipartUploads), HEAD (HeadObject, HeadBucket),
DELETE (DeleteObject(s), AbortMultipartUpload) and other. Each peer's row adds the ratios
cairn/peer of wall, CPU, peak RSS and requests. borg and bupstash have no S3 backend.
EOF
}

CMDLINE="$(printf '%q ' "$0" "$@")"
CMDLINE="${CMDLINE% }"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

QUICK=0
DATA_DIR=""
RUNS=""
OUT="bench-results.md"
WORK=""          # the work directory, made below
WORK_PARENT=""
TOOLS_WANTED="cairn,restic,borg,rustic,bupstash"
CAIRN=""
STEP_TIMEOUT=""
VERIFY=1
KEEP=0
INSTALL_PEERS=0
S3=0
S3_NODES=1
S3_DELAY_MS=""

while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --data) DATA_DIR="${2:?--data needs a directory}"; shift ;;
        --runs) RUNS="${2:?--runs needs a number}"; shift ;;
        --out) OUT="${2:?--out needs a file}"; shift ;;
        --work) WORK_PARENT="${2:?--work needs a directory}"; shift ;;
        --tools) TOOLS_WANTED="${2:?--tools needs a list}"; shift ;;
        --cairn) CAIRN="${2:?--cairn needs a path}"; shift ;;
        --timeout) STEP_TIMEOUT="${2:?--timeout needs seconds}"; shift ;;
        --no-verify) VERIFY=0 ;;
        --keep) KEEP=1 ;;
        --install-peers) INSTALL_PEERS=1 ;;
        --s3) S3=1 ;;
        --s3-nodes) S3_NODES="${2:?--s3-nodes needs 1 or 3}"; shift ;;
        --s3-delay) S3_DELAY_MS="${2:?--s3-delay needs milliseconds}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "bench.sh: unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$RUNS" ]; then
    if [ "$QUICK" = 1 ]; then RUNS=1; else RUNS=3; fi
fi
if [ -z "$STEP_TIMEOUT" ]; then
    if [ "$QUICK" = 1 ]; then STEP_TIMEOUT=600; else STEP_TIMEOUT=7200; fi
fi
case "$RUNS" in '' | *[!0-9]* | 0) echo "bench.sh: --runs must be a positive integer" >&2; exit 2 ;; esac
case "$S3_NODES" in 1 | 3) ;; *) echo "bench.sh: --s3-nodes must be 1 or 3" >&2; exit 2 ;; esac
case "$S3_DELAY_MS" in '' | [0-9] | [0-9][0-9] | [0-9][0-9][0-9]) ;; *) echo "bench.sh: --s3-delay must be 0-999 ms" >&2; exit 2 ;; esac
if [ "$QUICK" = 1 ] && [ -n "$DATA_DIR" ]; then
    echo "bench.sh: --quick and --data are exclusive" >&2
    exit 2
fi

BENCH_DATA="${CAIRN_BENCH_DATA:-/work/data}"
# cargo install puts rustic and bupstash here.
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

say() { printf '%s\n' "$*" >&2; }
die() { say "bench.sh: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (drops the page cache before every step, mounts FUSE)"

apt_install() {
    command -v apt-get >/dev/null || die "please install: $*"
    say "== apt-get install $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# --install-peers
# ---------------------------------------------------------------------------------------------

if [ "$INSTALL_PEERS" = 1 ]; then
    # borg mount needs a FUSE binding (the Debian package only recommends one).
    apt_install restic borgbackup python3-pyfuse3 fuse3
    command -v cargo >/dev/null || die "cargo install needs a Rust toolchain (rustup.rs)"
    say "== cargo install --locked rustic-rs (compiles for several minutes)"
    cargo install --locked rustic-rs
    # bupstash links libsodium through pkg-config.
    apt_install pkg-config libsodium-dev
    say "== cargo install --locked bupstash (compiles for several minutes)"
    cargo install --locked bupstash
    say "peers installed; now run scripts/bench.sh (or --quick)"
    exit 0
fi

# What every run needs: GNU time, rsync (to put version B where A was), fusermount3 and
# mountpoint (mount steps), python3 (generates and modifies data), xz (kernel tarballs).
missing=()
[ -x /usr/bin/time ] || missing+=(time)
command -v rsync >/dev/null || missing+=(rsync)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v mountpoint >/dev/null || missing+=(util-linux)
command -v python3 >/dev/null || missing+=(python3)
command -v xz >/dev/null || missing+=(xz-utils)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

# ---------------------------------------------------------------------------------------------
# Work directory, log, cleanup
# ---------------------------------------------------------------------------------------------

# Mounts (and their daemons) that are up right now, so the exit trap can take them down.
declare -A ACTIVE_MOUNTS=()   # mountpoint -> daemon pid
BG_PID=""                     # a background backup (rows 6b, 6c) that is running right now
GARAGE_PIDS=()                # the Garage nodes of the S3 rows while they run
DELAY_PID=""                  # the delaying proxy in front of them (--s3-delay)

cleanup() {
    local mnt
    if [ -n "$BG_PID" ]; then
        kill "$BG_PID" 2>/dev/null || true
        wait "$BG_PID" 2>/dev/null || true
    fi
    for mnt in "${!ACTIVE_MOUNTS[@]}"; do
        fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
        kill "${ACTIVE_MOUNTS[$mnt]}" 2>/dev/null || true
    done
    [ -z "$DELAY_PID" ] || kill "$DELAY_PID" 2>/dev/null || true
    if [ ${#GARAGE_PIDS[@]} -gt 0 ]; then
        kill "${GARAGE_PIDS[@]}" 2>/dev/null || true
        wait "${GARAGE_PIDS[@]}" 2>/dev/null || true
    fi
    if [ -n "$WORK" ] && [ "$KEEP" = 1 ]; then
        say "work directory kept: $WORK"
    elif [ -n "$WORK" ]; then
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The work directory is always a new cairn-bench.XXXXXX (inside --work DIR when given), so
# the exit trap removes exactly what this script made.
if [ -n "$WORK_PARENT" ]; then
    mkdir -p "$WORK_PARENT"
elif mkdir -p "$BENCH_DATA" 2>/dev/null && [ -w "$BENCH_DATA" ]; then
    WORK_PARENT="$BENCH_DATA"
else
    WORK_PARENT=/tmp
fi
fstype="$(stat -f -c %T "$WORK_PARENT")"
case "$fstype" in
    tmpfs | ramfs) die "$WORK_PARENT is on $fstype; pass --work DIR on a real disk" ;;
esac
WORK="$(mktemp -d "$(cd "$WORK_PARENT" && pwd)/cairn-bench.XXXXXX")"

case "$OUT" in *.md) LOG="${OUT%.md}.log" ;; *) LOG="$OUT.log" ;; esac
mkdir -p "$(dirname "$OUT")"
: >"$OUT" || die "cannot write $OUT"
: >"$LOG"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
LOG="$(cd "$(dirname "$LOG")" && pwd)/$(basename "$LOG")"
TF="$WORK/time.out"   # /usr/bin/time -o target


log() { printf '%s\n' "$*" >>"$LOG"; }

# ---------------------------------------------------------------------------------------------
# cairn binary
# ---------------------------------------------------------------------------------------------

if [ -z "$CAIRN" ]; then
    CAIRN="$ROOT/target/release/cairn"
    if [ ! -x "$CAIRN" ] || [ -n "$(find "$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" -newer "$CAIRN" -print -quit)" ]; then
        say "== cargo build --release (cairn is missing or older than its sources)"
        (cd "$ROOT" && cargo build --release --locked >&2)
    fi
fi
[ -x "$CAIRN" ] || die "no cairn binary at $CAIRN"
# Run a private copy: a build during the benchmark must not swap the binary between steps.
CAIRN_BUILT="$(date -u -r "$CAIRN" '+%Y-%m-%d %H:%M UTC')"
mkdir -p "$WORK/bin"
cp "$CAIRN" "$WORK/bin/cairn"
CAIRN_ORIG="$CAIRN"
CAIRN="$WORK/bin/cairn"
CAIRN_COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    CAIRN_COMMIT="$CAIRN_COMMIT (+ uncommitted changes in the working tree)"
fi

# ---------------------------------------------------------------------------------------------
# Tools: which are wanted and installed, and their versions
# ---------------------------------------------------------------------------------------------

ALL_TOOLS=(cairn restic borg rustic bupstash)
TOOLS=()
declare -A VERSION=() SKIPPED=()
for t in "${ALL_TOOLS[@]}"; do
    case ",$TOOLS_WANTED," in *",$t,"*) ;; *) continue ;; esac
    if [ "$S3" = 1 ]; then
        case "$t" in
            borg | bupstash) SKIPPED[$t]="no S3 backend"; continue ;;
        esac
    fi
    case "$t" in
        cairn) VERSION[$t]="$("$CAIRN" --version 2>&1 | head -n1)" ;;
        restic) command -v restic >/dev/null && VERSION[$t]="$(restic version 2>&1 | head -n1)" ;;
        borg) command -v borg >/dev/null && VERSION[$t]="$(borg --version 2>&1 | head -n1)" ;;
        rustic) command -v rustic >/dev/null && VERSION[$t]="$(rustic --version 2>&1 | head -n1)" ;;
        bupstash) command -v bupstash >/dev/null && VERSION[$t]="$(bupstash version 2>&1 | head -n1)" ;;
    esac
    if [ -n "${VERSION[$t]:-}" ]; then
        TOOLS+=("$t")
    else
        SKIPPED[$t]="not installed (scripts/bench.sh --install-peers)"
        say "notice: skipping $t: not installed (scripts/bench.sh --install-peers installs it)"
    fi
done
[ ${#TOOLS[@]} -gt 0 ] || die "no tool to benchmark"

# Which tools can serve a FUSE mount here (rustic only when built with its `mount` feature).
declare -A CAN_MOUNT=([cairn]=1 [restic]=1 [borg]=1)
if [ -n "${VERSION[rustic]:-}" ] && rustic mount --help >/dev/null 2>&1; then CAN_MOUNT[rustic]=1; fi
if [ -n "${VERSION[borg]:-}" ] && ! python3 -c 'import pyfuse3' 2>/dev/null && ! python3 -c 'import llfuse' 2>/dev/null \
    && ! /usr/bin/python3 -c 'import pyfuse3' 2>/dev/null && ! /usr/bin/python3 -c 'import llfuse' 2>/dev/null; then
    unset 'CAN_MOUNT[borg]'
    say "notice: borg mount needs python3-pyfuse3 or python3-llfuse; skipping borg's mount steps"
fi

# ---------------------------------------------------------------------------------------------
# Data: version A and version B
# ---------------------------------------------------------------------------------------------

# The deterministic data generator / modifier (Python, seeded; mtimes are fixed so that two
# generations give identical trees).
GEN_PY='
import os, random, sys

def logsize(rng, lo, hi):
    import math
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))

def content(rng, corpus, n, random_frac=0.35):
    if rng.random() < random_frac:
        return rng.randbytes(n)                       # incompressible
    off = rng.randrange(len(corpus) - n) if n < len(corpus) else 0
    return (corpus * (n // len(corpus) + 1))[off:off + n] if n >= len(corpus) else corpus[off:off + n]

def make_corpus(rng, size):
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10)))
             for _ in range(5000)]
    out, n = [], 0
    while n < size:
        line = " ".join(rng.choices(words, k=rng.randint(3, 14))) + ";\n"
        out.append(line); n += len(line)
    return "".join(out).encode()

BASE = 1704067200  # 2024-01-01, fixed mtimes

def gen(root, seed, nfiles=2000):
    rng = random.Random(seed)
    corpus = make_corpus(rng, 8 << 20)
    dirs = [os.path.join(root, "d%02d" % i, "s%d" % j) for i in range(8) for j in range(5)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    paths = []
    for i in range(nfiles):
        p = os.path.join(rng.choice(dirs), "f%04d.%s" % (i, rng.choice(["c", "h", "txt", "bin", "dat"])))
        if i < 20:
            data = b""                                 # empty files
        elif i < 24:
            data = content(rng, corpus, 4 << 20, 0.5)  # a few large ones (several chunks)
        else:
            data = content(rng, corpus, logsize(rng, 256, 128 << 10))
        with open(p, "wb") as f:
            f.write(data)
        os.utime(p, (BASE + i * 37, BASE + i * 37))
        paths.append(p)
    for i in range(20):                                # relative symlinks
        target = rng.choice(paths)
        link = os.path.join(os.path.dirname(target), "link%02d" % i)
        if not os.path.lexists(link):
            os.symlink(os.path.basename(target), link)
    for k, (dirpath, _, _) in enumerate(sorted(os.walk(root), reverse=True)):
        os.utime(dirpath, (BASE + k, BASE + k))

def mutate(root, seed, pct):
    """Modify pct% of the regular files (insert, overwrite or append), delete and add 0.5%."""
    rng = random.Random(seed)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for n in sorted(filenames):
            p = os.path.join(dirpath, n)
            if os.path.isfile(p) and not os.path.islink(p):
                files.append(p)
    files.sort()
    k = max(1, round(len(files) * pct / 100))
    chosen = rng.sample(files, k)
    for idx, p in enumerate(chosen):
        st = os.lstat(p)
        kind = idx % 3
        if st.st_size > (64 << 20) and kind != 2:
            kind = 1                                   # large: overwrite in place, never read whole
        if kind == 0 and st.st_size > 0:               # insert a few bytes in the middle
            with open(p, "rb") as f:
                data = f.read()
            off = rng.randrange(len(data))
            data = data[:off] + rng.randbytes(rng.randint(1, 200)) + data[off:]
            with open(p, "wb") as f:
                f.write(data)
        elif kind == 1 and st.st_size > 4096:          # overwrite 4 KiB in place
            with open(p, "r+b") as f:
                f.seek(rng.randrange(st.st_size - 4096))
                f.write(rng.randbytes(4096))
        else:                                          # append
            with open(p, "ab") as f:
                f.write(rng.randbytes(rng.randint(1, 4096)))
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 86400 * 10**9))
    rest = sorted(set(files) - set(chosen))
    n = max(1, len(files) // 200)
    for p in rng.sample(rest, min(n, len(rest))):
        os.unlink(p)
    for i in range(n):
        d = os.path.dirname(rng.choice(files))
        p = os.path.join(d, "bench-new-%05d.dat" % i)
        with open(p, "wb") as f:
            f.write(rng.randbytes(logsize(rng, 256, 64 << 10)))
        os.utime(p, (BASE, BASE))
    print("%d files modified, %d deleted, %d added" % (k, n, n))

if sys.argv[1] == "gen":
    gen(sys.argv[2], int(sys.argv[3]))
else:
    mutate(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
'

# "N files, N dirs, N symlinks, N bytes (X MiB) in regular files" for a tree.
describe_tree() {
    find "$1" -mindepth 1 -printf '%y %s\n' | awk '
        $1 == "f" { f++; b += $2 } $1 == "d" { d++ } $1 == "l" { l++ }
        END { printf "%d files, %d dirs, %d symlinks, %d bytes (%.1f MiB) in files", f, d, l, b, b / 1048576 }'
}

# Unpack Debian's linux-source-V into $BENCH_DATA/linux-source-V once; later runs reuse it.
kernel_tree() {
    local v=$1 dir="$BENCH_DATA/linux-source-$1" tmp deb tarball
    if [ -d "$dir" ] && [ -f "$dir/Makefile" ]; then
        echo "$dir"
        return
    fi
    if ! command -v dpkg-deb >/dev/null || ! command -v apt-get >/dev/null; then
        die "need apt-get and dpkg-deb for the kernel trees (or use --data DIR)"
    fi
    mkdir -p "$BENCH_DATA"
    tmp="$(mktemp -d "$BENCH_DATA/.unpack-$v.XXXXXX")"
    deb="$(find "$BENCH_DATA" -maxdepth 1 -name "linux-source-${v}_*_all.deb" 2>/dev/null | sort | tail -n1 || true)"
    if [ -z "$deb" ]; then
        say "== apt-get download linux-source-$v"
        (cd "$tmp" && apt-get download "linux-source-$v" >&2)
        deb="$(find "$tmp" -maxdepth 1 -name "linux-source-${v}_*.deb" | sort | tail -n1)"
        [ -n "$deb" ] || die "apt-get download linux-source-$v left no .deb"
    fi
    say "== unpacking $(basename "$deb") into $dir"
    dpkg-deb -x "$deb" "$tmp/deb"
    tarball="$(find "$tmp/deb/usr/src" -maxdepth 1 -name "linux-source-$v.tar.*" | sort | head -n1)"
    [ -n "$tarball" ] || die "no linux-source-$v.tar.* in $deb"
    tar -xf "$tarball" -C "$tmp"
    [ -d "$tmp/linux-source-$v" ] || die "unexpected layout in $tarball"
    mv "$tmp/linux-source-$v" "$dir"
    rm -rf "$tmp"
    echo "$dir"
}

kernel_version() {   # "6.1.192" from a tree's Makefile
    awk -F' = ' '/^VERSION =/ { v = $2 } /^PATCHLEVEL =/ { p = $2 } /^SUBLEVEL =/ { s = $2 }
                 /^EXTRAVERSION/ { exit } END { printf "%s.%s.%s", v, p, s }' "$1/Makefile"
}

mkdir -p "$WORK/gen"
B=""
if [ "$QUICK" = 1 ]; then
    say "== generating the --quick data"
    A="$WORK/gen/A"
    B="$WORK/gen/B"
    mkdir -p "$A"
    python3 -c "$GEN_PY" gen "$A" 1
    DATA_DESC="generated --quick tree (seed 1; ~35% random, ~65% compressible text)"
elif [ -n "$DATA_DIR" ]; then
    [ -d "$DATA_DIR" ] || die "--data $DATA_DIR is not a directory"
    A="$(cd "$DATA_DIR" && pwd)"
    B="$WORK/gen/B"
    DATA_DESC="$A"
else
    A="$(kernel_tree 6.1)"
    DATA_DESC="Debian linux-source-6.1 (kernel $(kernel_version "$A")), $A"
fi
A_STATS="$(describe_tree "$A")"
say "A: $DATA_DESC: $A_STATS"
# Version B: the next kernel, or a copy of A with ~5% of its files modified.
if [ -n "$B" ]; then
    say "== copying $A and modifying ~5% of its files"
    cp -a "$A" "$B"
    change="$(python3 -c "$GEN_PY" mutate "$B" 2 5)"
    B_DESC="a copy of A with $change (seed 2)"
else
    B="$(kernel_tree 6.12)"
    B_DESC="Debian linux-source-6.12 (kernel $(kernel_version "$B")), $B"
fi
B_STATS="$(describe_tree "$B")"
say "B: $B_DESC: $B_STATS"

# Every backup reads the same fixed path, so stat caches and parent snapshots work across
# versions: version A or B is synced into it (untimed) before the backups.
SRC="$WORK/src"
sync_src() {   # sync_src DIR
    mkdir -p "$SRC"
    rsync -aH --delete "$1/" "$SRC/"
}

# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

declare -A RES=()     # "tool|step|run" -> "wall cpu rss_kib repo_bytes", FAILED or n/a
declare -A COUNT=()   # "tool|step|run" -> tar bytes / find entries (mount and floor reads)
declare -A NOTES=()   # "tool" -> free text for the notes section

# The command being measured, shell-quoted, into the log (a `bash -c SCRIPT` as written).
log_cmd() {
    if [ "$1" = bash ] && [ "$2" = -c ]; then
        log "+ bash -c '$3' $(printf '%q ' "${@:4}")"
    else
        log "+ $(printf '%q ' "$@")"
    fi
}

# timed TOOL STEP RUN [--warm] CMD...: drop the page cache (unless --warm), run CMD under
# /usr/bin/time and a timeout, and record "wall cpu rss". Returns CMD's status.
timed() {
    local tool=$1 step=$2 run=$3 warm=0 key line status
    shift 3
    if [ "$1" = --warm ]; then warm=1; shift; fi
    key="$tool|$step|$run"
    [ "$warm" = 1 ] || drop_caches
    log_cmd "$@"
    status=0
    /usr/bin/time -f '%e %U %S %M' -o "$TF" timeout -k 30 "$STEP_TIMEOUT" "$@" >>"$LOG" 2>&1 || status=$?
    if [ "$status" = 0 ]; then
        line="$(tail -n1 "$TF")"
        RES[$key]="$(awk '{ printf "%s %.2f %s", $1, $2 + $3, $4 }' <<<"$line")"
        log "  = $line (wall user sys maxrss-KiB)"
    else
        RES[$key]=FAILED
        if [ "$status" = 124 ]; then log "  = TIMED OUT after ${STEP_TIMEOUT}s"; else log "  = FAILED with status $status"; fi
        say "    $tool $step: FAILED (status $status; see $LOG)"
    fi
    return "$status"
}

# Append the repository's size (bytes on disk, apparent) to a step's result.
add_size() {   # add_size TOOL STEP RUN REPO
    local key="$1|$2|$3"
    [ "${RES[$key]}" != FAILED ] || return 0
    RES[$key]="${RES[$key]} $(du -sb "$4" 2>/dev/null | cut -f1 || echo 0)"
}

STEP_NAMES=(b1 b2 b3 rs mt mf bt)
declare -A STEP_LABEL=(
    [b1]="1. backup A (first)"
    [b2]="2. backup A again (unchanged)"
    [b3]="3. backup B (next version)"
    [rs]="4. restore latest"
    [mt]="5a. mount: read latest with tar"
    [mf]="5b. mount: list latest with find"
    [bt]="8. backup one large file (A as one tar)"
    [f_cp]="floor: cp -a tree (restore floor)"
    [f_tarc]="floor: read tree with tar (cold)"
    [f_tarw]="floor: read tree with tar (warm)"
    [f_find]="floor: list tree with find (cold)"
    [f_tarA]="floor: read version A with tar (cold)"
    [f_mem]="floor: in-memory pipeline (version A)"
    [f_memtar]="floor: in-memory pipeline (A as one tar)"
    [fg]="6a. foreground job alone"
    [fg_low]="6b. foreground job during backup --low-priority"
    [fg_plain]="6c. foreground job during plain backup"
    [ns_full]="7a. network sync: first copy of A"
    [ns_full_rsync]="7a. network sync: first copy of A"
    [ns_1pc]="7b. network sync: after 1% of files changed"
    [ns_1pc_rsync]="7b. network sync: after 1% of files changed"
)
FLOOR_STEPS=(f_cp f_tarc f_tarw f_find f_tarA f_mem f_memtar)
LOW_STEPS=(fg fg_low fg_plain)   # cairn only
NET_STEPS=(ns_full ns_1pc)       # cairn against rsync (recorded under the tool "rsync" as *_rsync)

# The two read commands timed on a mount (and as floors on the source tree). They exit non-zero
# when tar fails outright (status 2) or wc fails; tar's "file changed as we read it" (1) is only
# logged. (Single quotes: bash -c expands them.)
# shellcheck disable=SC2016
TAR_CMD='tar cf - -C "$1" . | wc -c >"$2"; s=("${PIPESTATUS[@]}"); [ "${s[0]}" -le 1 ] && [ "${s[1]}" = 0 ]'
# shellcheck disable=SC2016
FIND_CMD='set -o pipefail; find "$1/" | wc -l >"$2"'
# The foreground job of rows 6a-6c, CPU- and disk-bound: like TAR_CMD with gzip -1 in between.
# shellcheck disable=SC2016
FG_CMD='tar cf - -C "$1" . | gzip -1 | wc -c >"$2"; s=("${PIPESTATUS[@]}"); [ "${s[0]}" -le 1 ] && [ "${s[1]}" = 0 ] && [ "${s[2]}" = 0 ]'
# It reads A's drivers/ (~70% of the 6.1 kernel tree, ~900 MB), or all of A when there is none
# (--quick, --data).
if [ -d "$A/drivers" ]; then FG_DIR="$A/drivers"; else FG_DIR="$A"; fi

# Row 8 backs up one large file, the kind users back up alone (VM images, database dumps,
# archives): version A as one uncompressed tar, made once (untimed), alone in its directory.
BIG_DIR="$WORK/one-large-file"
make_big_file() {
    [ -s "$BIG_DIR/A.tar" ] && return 0
    mkdir -p "$BIG_DIR"
    tar cf "$BIG_DIR/A.tar.part" -C "$A" . && mv "$BIG_DIR/A.tar.part" "$BIG_DIR/A.tar"
}

# ---------------------------------------------------------------------------------------------
# The tools. Each gets a fresh repository and cache per run under $WORK/tools/<tool>; the
# settings match where the tools have them: encryption on, zstd level 3 (or the default).
# ---------------------------------------------------------------------------------------------

PASSWORD="cairn-bench-password"

# tool_env TOOL DIR: point the tool at DIR/repo and DIR/cache through its environment.
tool_env() {
    local t=$1 d=$2
    case "$t" in
        cairn) export CAIRN_PASSWORD="$PASSWORD" CAIRN_CACHE_DIR="$d/cache" CAIRN_REPO="$d/repo" ;;
        restic) export RESTIC_PASSWORD="$PASSWORD" RESTIC_CACHE_DIR="$d/cache" RESTIC_REPOSITORY="$d/repo" ;;
        borg) export BORG_PASSPHRASE="$PASSWORD" BORG_BASE_DIR="$d/cache" BORG_REPO="$d/repo" ;;
        rustic) export RUSTIC_PASSWORD="$PASSWORD" RUSTIC_CACHE_DIR="$d/cache" RUSTIC_REPOSITORY="$d/repo" ;;
        bupstash)
            export BUPSTASH_REPOSITORY="$d/repo" BUPSTASH_KEY="$d/bupstash.key" \
                BUPSTASH_SEND_LOG="$d/cache/bupstash.sendlog" XDG_CACHE_HOME="$d/cache"
            ;;
    esac
}

tool_init() {   # untimed
    local t=$1 d=$2
    case "$t" in
        cairn) "$CAIRN" init --repo "$d/repo" ;;
        restic) restic init ;;
        borg) borg init --encryption repokey-blake2 "$d/repo" ;;
        rustic) rustic init ;;
        bupstash) bupstash new-key -o "$d/bupstash.key" && bupstash init ;;
    esac
}

# backup_cmd TOOL N [DIR]: the command for backup number N of DIR ($SRC by default), into
# the array CMD.
backup_cmd() {
    local src="${3:-$SRC}"
    case "$1" in
        cairn) CMD=("$CAIRN" backup --repo "$CAIRN_REPO" "$src") ;;
        restic) CMD=(restic backup "$src") ;;
        borg) CMD=(borg create --compression "zstd,3" "::s$2" "$src") ;;
        rustic) CMD=(rustic backup "$src") ;;
        bupstash) CMD=(bupstash put "step=s$2" "$src") ;;
    esac
}

# restore_cmd TOOL TARGET: restore the latest snapshot (backup 3) into TARGET.
restore_cmd() {
    case "$1" in
        cairn) CMD=("$CAIRN" restore --repo "$CAIRN_REPO" latest --target "$2") ;;
        restic) CMD=(restic restore latest --target "$2") ;;
        borg) CMD=(env -C "$2" borg extract ::s3) ;;
        rustic) CMD=(rustic restore latest "$2") ;;
        bupstash) CMD=(bupstash restore --into "$2" step=s3) ;;
    esac
}

# The source tree inside a restored or mounted snapshot: tools that keep the absolute path
# (restic, borg, rustic) have $SRC below the snapshot's root.
inside() {
    if [ -d "$1$SRC" ]; then echo "$1$SRC"; else echo "$1"; fi
}

# mount_start TOOL MNT: start the tool's FUSE daemon in the background (MPID), wait until the
# latest snapshot is listable, and set MDIR to the source tree in it. Untimed.
mount_start() {
    local t=$1 mnt=$2 i latest=""
    mkdir -p "$mnt"
    case "$t" in
        cairn) log_cmd "$CAIRN" mount --repo "$CAIRN_REPO" "$mnt"; "$CAIRN" mount --repo "$CAIRN_REPO" "$mnt" >>"$LOG" 2>&1 & ;;
        restic) log_cmd restic mount "$mnt"; restic mount "$mnt" >>"$LOG" 2>&1 & ;;
        borg) log_cmd borg mount -f "$BORG_REPO" "$mnt"; borg mount -f "$BORG_REPO" "$mnt" >>"$LOG" 2>&1 & ;;
        rustic) log_cmd rustic mount "$mnt"; rustic mount "$mnt" >>"$LOG" 2>&1 & ;;
    esac
    MPID=$!
    ACTIVE_MOUNTS[$mnt]=$MPID
    for ((i = 0; i < 3000; i++)); do   # up to 10 minutes: a big repository's index loads first
        if ! kill -0 "$MPID" 2>/dev/null; then
            log "  = mount daemon exited before the mount was ready"
            return 1
        fi
        if mountpoint -q "$mnt"; then
            case "$t" in
                cairn) latest="$mnt/latest" ;;
                restic) latest="$mnt/snapshots/latest" ;;
                borg) latest="$mnt/s3" ;;
                rustic) latest="$(find "$mnt" -maxdepth 3 -name latest -print -quit 2>/dev/null || true)" ;;
            esac
            if [ -n "$latest" ] && [ -n "$(ls -A "$latest/" 2>/dev/null)" ]; then
                MDIR="$(inside "$latest")"
                log "  = mounted after $((i / 5)).$((i % 5 * 2))s; reading $MDIR"
                return 0
            fi
        fi
        sleep 0.2
    done
    log "  = mount not ready after 600s"
    return 1
}

mount_stop() {   # mount_stop TOOL MNT
    local t=$1 mnt=$2 pid=${ACTIVE_MOUNTS[$2]:-} i
    if mountpoint -q "$mnt"; then
        if [ "$t" = borg ]; then borg umount "$mnt" >>"$LOG" 2>&1 || fusermount3 -u -z "$mnt" >>"$LOG" 2>&1 || true
        else fusermount3 -u "$mnt" >>"$LOG" 2>&1 || fusermount3 -u -z "$mnt" >>"$LOG" 2>&1 || true; fi
    fi
    if [ -n "$pid" ]; then
        for ((i = 0; i < 150; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then
            log "  = $t mount daemon still running 30s after the unmount; killing it"
            kill "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    fi
    unset 'ACTIVE_MOUNTS[$mnt]'
}

# CPU seconds (user+sys) a process has used so far, and its peak RSS in KiB.
proc_cpu() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($12 + $13) / hz }' || echo 0; }
proc_hwm() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# mount_read TOOL STEP RUN TOOLDIR CMD: a fresh mount, a cold read of the latest snapshot
# through it with CMD (TAR_CMD or FIND_CMD), unmount. The row gets the reader's wall time, CPU
# of reader + daemon, and the larger of the two peak RSS values (the daemon's, in practice).
# Returns 1 when the mount or the read failed.
mount_read() {
    local t=$1 step=$2 run=$3 d=$4 cmd=$5 key="$1|$2|$3" c0 c1 hwm wall cpu rss status=0
    local mnt="$d/mnt"
    if ! mount_start "$t" "$mnt"; then
        RES[$key]=FAILED
        say "    $t $step: FAILED (the mount did not come up; see $LOG)"
        mount_stop "$t" "$mnt"
        return 1
    fi
    c0="$(proc_cpu "$MPID")"
    if timed "$t" "$step" "$run" bash -c "$cmd" _ "$MDIR" "$d/count"; then
        c1="$(proc_cpu "$MPID")"
        hwm="$(proc_hwm "$MPID")"
        read -r wall cpu rss <<<"${RES[$key]}"
        RES[$key]="$(awk -v w="$wall" -v c="$cpu" -v r="$rss" -v a="$c0" -v b="$c1" -v h="${hwm:-0}" \
            'BEGIN { printf "%s %.2f %d", w, c + b - a, (h > r ? h : r) }')"
        COUNT[$key]="$(cat "$d/count")"
        log "  = daemon cpu $(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.2f", b - a }')s, daemon peak rss ${hwm:-?} KiB, output ${COUNT[$key]}"
    else
        status=1
    fi
    mount_stop "$t" "$mnt"
    return "$status"
}

# mount_step TOOL STEP RUN TOOLDIR: row 5a (tar) or 5b (find) through the mount, with the
# repository's size.
mount_step() {
    local cmd
    if [ "$2" = mt ]; then cmd=$TAR_CMD; else cmd=$FIND_CMD; fi
    mount_read "$1" "$2" "$3" "$4" "$cmd" || true
    add_size "$1" "$2" "$3" "$4/repo"
}

# listing DIR: one line per entry below DIR with what a restore must reproduce.
listing() {
    (cd "$1" && find . -mindepth 1 \( -type d -printf '%P|d|%m|%U:%G|%T@\n' \) -o \
        -printf '%P|%y|%m|%U:%G|%s|%T@|%l\n' | LC_ALL=C sort)
}

# verify_restore TOOL DIR: untimed comparison of a restore with $SRC, into NOTES.
verify_restore() {
    local t=$1 got=$2 content meta
    content="$(diff -r --no-dereference -q "$SRC" "$got" 2>&1 | wc -l || true)"
    meta="$(diff <(listing "$SRC") <(listing "$got") | grep -c '^[<>]' || true)"
    if [ "$content" = 0 ] && [ "$meta" = 0 ]; then
        NOTES[$t]+="restore identical to the source (content, type, mode, owner, size, mtime, link target). "
    else
        NOTES[$t]+="restore differs from the source: ${content} diff -r lines, ${meta} listing lines (see the log). "
        {
            echo "== $t restore vs source (first lines)"
            diff -r --no-dereference -q "$SRC" "$got" 2>&1 | head -n 10 || true
            diff <(listing "$SRC") <(listing "$got") | head -n 20 || true
        } >>"$LOG"
    fi
}

# run_tool TOOL RUN: the whole sequence for one tool in a fresh repository and cache.
run_tool() {
    local t=$1 run=$2 d="$WORK/tools/$1" s n
    rm -rf "$d"
    mkdir -p "$d/cache"
    tool_env "$t" "$d"
    log ""
    log "=== run $run: $t"
    sync_src "$A"
    log_cmd init "$t"
    if ! tool_init "$t" "$d" >>"$LOG" 2>&1; then
        say "    $t: init FAILED (see $LOG)"
        for s in "${STEP_NAMES[@]}"; do RES[$t|$s|$run]=FAILED; done
        return
    fi
    for n in 1 2 3; do
        [ "$n" = 3 ] && sync_src "$B"
        backup_cmd "$t" "$n"
        timed "$t" "b$n" "$run" "${CMD[@]}" || true
        add_size "$t" "b$n" "$run" "$d/repo"
        say "    $t ${STEP_LABEL[b$n]}: ${RES[$t|b$n|$run]}"
    done
    mkdir -p "$d/restore"
    restore_cmd "$t" "$d/restore"
    if timed "$t" rs "$run" "${CMD[@]}"; then
        [ "$VERIFY" = 1 ] && [ "$run" = 1 ] && verify_restore "$t" "$(inside "$d/restore")"
    fi
    add_size "$t" rs "$run" "$d/repo"
    say "    $t ${STEP_LABEL[rs]}: ${RES[$t|rs|$run]}"
    rm -rf "$d/restore"
    for s in mt mf; do
        if [ -n "${CAN_MOUNT[$t]:-}" ]; then
            mount_step "$t" "$s" "$run" "$d"
        else
            RES[$t|$s|$run]="n/a"
        fi
        say "    $t ${STEP_LABEL[$s]}: ${RES[$t|$s|$run]}"
    done
    [ "$run" != 1 ] || NOTES[$t]+="cache after the run: $(du -sb "$d/cache" | awk '{ printf "%.1f MiB", $1 / 1048576 }'). "
    rm -rf "$d"
    run_big_file "$t" "$run"
}

# run_big_file TOOL RUN: row 8, the one large file backed up into a fresh repository and cache.
run_big_file() {
    local t=$1 run=$2 d="$WORK/tools/$1-large-file"
    rm -rf "$d"
    mkdir -p "$d/cache"
    tool_env "$t" "$d"
    if ! make_big_file >>"$LOG" 2>&1 || ! tool_init "$t" "$d" >>"$LOG" 2>&1; then
        RES[$t|bt|$run]=FAILED
        say "    $t ${STEP_LABEL[bt]}: FAILED (making the tar or init; see $LOG)"
    else
        backup_cmd "$t" 1 "$BIG_DIR"
        timed "$t" bt "$run" "${CMD[@]}" || true
        add_size "$t" bt "$run" "$d/repo"
        say "    $t ${STEP_LABEL[bt]}: ${RES[$t|bt|$run]}"
    fi
    rm -rf "$d"
}

# pipeline_floor STEP RUN PATH: `cairn pipeline-speed` on PATH as floor STEP.
pipeline_floor() {
    local step=$1 run=$2 json="$WORK/pipeline-speed.json" secs
    rm -f "$json"
    # shellcheck disable=SC2016
    if timed floor "$step" "$run" bash -c '"$1" pipeline-speed --json "$2" >"$3"' _ "$CAIRN" "$3" "$json"; then
        cat "$json" >>"$LOG"
        if secs="$(python3 -c 'import json, sys; print("%.3f" % json.load(open(sys.argv[1]))["seconds"])' "$json" 2>>"$LOG")"; then
            RES[floor|$step|$run]="$secs $(awk '{ print $2, $3 }' <<<"${RES[floor|$step|$run]}")"
            MEM_INFO[$step|$run]="$(python3 -c 'import json, sys; j = json.load(open(sys.argv[1]))
print("%d files, %d bytes, %d chunks on %d threads: %.0f MiB/s" % (j["files"], j["bytes"], j["chunks"], j["threads"], j["mib_per_second"]))' "$json")"
        else
            RES[floor|$step|$run]=FAILED
            say "    floor $step: FAILED (no \"seconds\" in the output of cairn pipeline-speed; see $LOG)"
        fi
    fi
    rm -f "$json"
}

# run_floors RUN: the floors, on version B in $SRC (the tree that is restored and mounted),
# and two on version A (what the first backup reads): a cold tar and the in-memory pipeline.
declare -A MEM_INFO=()   # "step|run" -> what `cairn pipeline-speed` reported, for the notes
run_floors() {
    local run=$1
    log ""
    log "=== run $run: floors"
    sync_src "$B"
    rm -rf "$WORK/floor-cp"
    timed floor f_cp "$run" cp -a "$SRC" "$WORK/floor-cp" || true
    rm -rf "$WORK/floor-cp"
    timed floor f_tarc "$run" bash -c "$TAR_CMD" _ "$SRC" "$WORK/count" && COUNT[floor|f_tarc|$run]="$(cat "$WORK/count")"
    bash -c "$TAR_CMD" _ "$SRC" "$WORK/count" || true   # warm the page cache
    timed floor f_tarw "$run" --warm bash -c "$TAR_CMD" _ "$SRC" "$WORK/count" && COUNT[floor|f_tarw|$run]="$(cat "$WORK/count")"
    timed floor f_find "$run" bash -c "$FIND_CMD" _ "$SRC" "$WORK/count" && COUNT[floor|f_find|$run]="$(cat "$WORK/count")"
    timed floor f_tarA "$run" bash -c "$TAR_CMD" _ "$A" "$WORK/count" && COUNT[floor|f_tarA|$run]="$(cat "$WORK/count")"
    # The in-memory pipeline on A, and on A as one tar (row 8's file): cairn loads the files
    # in batches (untimed) and reports the pipeline's own time, which becomes the wall time;
    # CPU and peak RSS are the whole command's.
    pipeline_floor f_mem "$run" "$A"
    if make_big_file >>"$LOG" 2>&1; then
        pipeline_floor f_memtar "$run" "$BIG_DIR/A.tar"
    else
        RES[floor|f_memtar|$run]=FAILED
    fi
    local s
    for s in "${FLOOR_STEPS[@]}"; do say "    ${STEP_LABEL[$s]}: ${RES[floor|$s|$run]}"; done
}

# run_lowimpact RUN: rows 6a-6c for cairn. The foreground job runs with a cold cache alone,
# then during `cairn backup --low-priority` of B, then during a plain `cairn backup` of B; each
# backup goes into a fresh repository and cache (removed afterwards) and starts right before
# the foreground job; once the job is done, the backup is waited for (untimed) and must succeed.
run_lowimpact() {
    local run=$1 d="$WORK/tools/cairn-lowimpact" step flag row bstatus bg fgwall
    rm -rf "$d"
    mkdir -p "$d"
    log ""
    log "=== run $run: cairn, foreground job ($FG_DIR) alone and during backups of B"
    timed cairn fg "$run" bash -c "$FG_CMD" _ "$FG_DIR" "$d/count" && COUNT[cairn|fg|$run]="$(cat "$d/count")"
    say "    cairn ${STEP_LABEL[fg]}: ${RES[cairn|fg|$run]}"
    for step in fg_low fg_plain; do
        if [ "$step" = fg_low ]; then flag=(--low-priority); row=6b; else flag=(); row=6c; fi
        rm -rf "${d:?}/$step"
        mkdir -p "$d/$step/cache"
        tool_env cairn "$d/$step"
        log_cmd init cairn
        if ! tool_init cairn "$d/$step" >>"$LOG" 2>&1; then
            RES[cairn|$step|$run]=FAILED
            say "    cairn ${STEP_LABEL[$step]}: FAILED (init; see $LOG)"
            rm -rf "${d:?}/$step"
            continue
        fi
        drop_caches
        log "+ $(printf '%q ' "$CAIRN" backup "${flag[@]}" --repo "$CAIRN_REPO" "$B")&"
        # timeout signals its whole process group, so killing BG_PID (the exit trap) also
        # stops cairn; /usr/bin/time records the backup's own wall and CPU time.
        timeout -k 30 "$STEP_TIMEOUT" /usr/bin/time -f '%e %U %S %M' -o "$d/$step/backup.time" \
            "$CAIRN" backup "${flag[@]}" --repo "$CAIRN_REPO" "$B" >>"$LOG" 2>&1 &
        BG_PID=$!
        # The cache was dropped just above, so the job runs --warm here (no second drop).
        timed cairn "$step" "$run" --warm bash -c "$FG_CMD" _ "$FG_DIR" "$d/count" || true
        bstatus=0
        wait "$BG_PID" || bstatus=$?
        BG_PID=""
        bg="$(tail -n1 "$d/$step/backup.time" 2>/dev/null || true)"
        log "  = background backup: status $bstatus; $bg (wall user sys maxrss-KiB)"
        if [ "$bstatus" != 0 ]; then
            RES[cairn|$step|$run]=FAILED
            say "    cairn ${STEP_LABEL[$step]}: FAILED (the background backup failed with status $bstatus; see $LOG)"
        elif [ "$run" = 1 ] && [ "${RES[cairn|$step|$run]}" != FAILED ]; then
            fgwall="$(awk '{ print $1 }' <<<"${RES[cairn|$step|$run]}")"
            NOTES[cairn]+="$(awk -v r="$row" -v f="$fgwall" '{ printf "%s: the backup took %.1f s wall, %.1f s CPU (the job %s s; the backup %s). ", r, $1, $2 + $3, f, ($1 >= f ? "outlasted the job" : "ended first, so it overlapped only part of the job") }' <<<"$bg")"
        fi
        say "    cairn ${STEP_LABEL[$step]}: ${RES[cairn|$step|$run]}"
        rm -rf "${d:?}/$step"
    done
    rm -rf "$d"
}

# run_netsync RUN: rows 7a-7b, directory to directory over loopback: `cairn serve --source`
# and `cairn sync URL DIR --delete` against an rsync daemon and `rsync -a --delete --stats`.
# Both first copy A into an empty directory (7a), then, after 1% of A's files (every 100th,
# 8 bytes in the middle) changed, bring their copies up to date (7b). Bytes moved are what
# each reports: cairn's bytes_transferred (every answer from the server, compressed as sent)
# and rsync's "Total bytes received" (plus "sent", what the client sent).
NS_PORT=""
run_netsync() {
    local run=$1 d="$WORK/netsync" url token f size status cairn_pid rsync_pid
    rm -rf "$d"
    mkdir -p "$d/cache"
    rsync -aH "$A/" "$d/src/"
    token="$d/token"
    echo "bench-token" >"$token"
    log ""
    log "=== run $run: network sync, cairn serve/sync against an rsync daemon (loopback)"
    env -u CAIRN_REPO "$CAIRN" serve --source a="$d/src" --listen 127.0.0.1:0 --token-file "$token" >"$d/serve.out" 2>>"$LOG" &
    cairn_pid=$!
    for _ in $(seq 50); do grep -q "^listening on" "$d/serve.out" 2>/dev/null && break; sleep 0.1; done
    url="$(awk '/^source a at/ { print $4 }' "$d/serve.out")"
    NS_PORT=$((20000 + RANDOM % 20000))
    printf 'pid file = %s\nuse chroot = no\n[a]\npath = %s\nread only = yes\nuid = root\ngid = root\n' \
        "$d/rsyncd.pid" "$d/src" >"$d/rsyncd.conf"
    rsync --daemon --config="$d/rsyncd.conf" --port="$NS_PORT" --address=127.0.0.1
    for _ in $(seq 50); do [ -s "$d/rsyncd.pid" ] && break; sleep 0.1; done
    rsync_pid="$(cat "$d/rsyncd.pid" 2>/dev/null || true)"
    export CAIRN_CACHE_DIR="$d/cache"
    for step in ns_full ns_1pc; do
        if [ "$step" = ns_1pc ]; then
            find "$d/src" -type f | sort | awk 'NR % 100 == 0' >"$d/changed"
            while IFS= read -r f; do
                size="$(stat -c %s "$f")"
                printf 'CAIRN1PC' | dd of="$f" bs=1 seek=$((size / 2)) conv=notrunc status=none
            done <"$d/changed"
            log "changed $(wc -l <"$d/changed") files of $d/src"
        fi
        status=0
        timed cairn "$step" "$run" "$CAIRN" sync --json --delete --token-file "$token" "$url" "$d/cairn-copy" || status=$?
        if [ "$status" = 0 ]; then
            COUNT[cairn|$step|$run]="$(grep -o '"bytes_transferred": [0-9]*' "$LOG" | tail -n1 | grep -o '[0-9]*$')"
        fi
        timed rsync "${step}_rsync" "$run" rsync -a --delete --stats "rsync://127.0.0.1:$NS_PORT/a/" "$d/rsync-copy/" || true
        COUNT["rsync|${step}_rsync|$run"]="$(grep -o 'Total bytes received: [0-9,]*' "$LOG" | tail -n1 | grep -o '[0-9,]*$' | tr -d ,)"
        COUNT["rsync_sent|${step}_rsync|$run"]="$(grep -o 'Total bytes sent: [0-9,]*' "$LOG" | tail -n1 | grep -o '[0-9,]*$' | tr -d ,)"
        say "    cairn ${STEP_LABEL[$step]}: ${RES[cairn|$step|$run]}, ${COUNT[cairn|$step|$run]:-?} bytes; rsync: ${RES[rsync|${step}_rsync|$run]}, ${COUNT[rsync|${step}_rsync|$run]:-?} bytes"
    done
    if [ "$run" = 1 ]; then
        if diff -r --no-dereference "$d/src" "$d/cairn-copy" >>"$LOG" 2>&1; then
            NOTES[netsync]+="cairn's copy identical to the source after 7b. "
        else
            NOTES[netsync]+="cairn's copy DIFFERS from the source after 7b (see the log). "
        fi
    fi
    kill "$cairn_pid" 2>/dev/null || true
    [ -z "$rsync_pid" ] || kill "$rsync_pid" 2>/dev/null || true
    wait "$cairn_pid" 2>/dev/null || true
    rm -rf "$d"
}

# ---------------------------------------------------------------------------------------------
# S3 rows (--s3): cairn, restic and rustic against Garage on loopback
# ---------------------------------------------------------------------------------------------

# The key, bucket and tokens of the bench's Garage (a key id is GK and 24 hex digits).
S3_KEY_ID="GK0123456789abcdef01234567"
S3_SECRET="5ecre75ecre75ecre75ecre75ecre75ecre75ecre75ecre75ecre75ecre75ec0"
S3_BUCKET="bench"
S3_REGION="garage"
GARAGE_METRICS_TOKEN="cairn-bench-metrics-token"
S3_STEPS=(s1 s2 s3 s4 s5)
STEP_LABEL[s1]="s1. S3: backup A (first)"
STEP_LABEL[s2]="s2. S3: backup A again (unchanged)"
STEP_LABEL[s3]="s3. S3: backup B (next version)"
STEP_LABEL[s4]="s4. S3: restore latest"
STEP_LABEL[s5]="s5. S3: mount: read latest with tar"
S3_KINDS=(GET PUT LIST HEAD DELETE other)

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# garage_cli CMD...: the Garage CLI against the bench's first node (the one the tools talk to), quiet.
garage_cli() { RUST_LOG=warn "$GARAGE" -c "$GARAGE_DIR/node1/garage.toml" "$@" </dev/null; }

# retry CMD...: run CMD until it succeeds, for up to 60 s (a node just started may not answer).
retry() {
    local i
    for ((i = 0; i < 600; i++)); do
        "$@" >>"$LOG" 2>&1 && return 0
        sleep 0.1
    done
    log "  = still failing after 60s: $*"
    return 1
}

# garage_start: $S3_NODES Garage nodes (replication_factor $S3_NODES) in $WORK/garage/nodeN on
# free loopback ports, connected, with the layout applied, the key imported and the bucket made
# and allowed; sets GARAGE_PIDS, and S3_ENDPOINT and GARAGE_ADMIN of the first node. Untimed.
garage_start() {
    local n s3_port rpc_port admin dir id ids=()
    GARAGE="${CAIRN_GARAGE:-}"
    [ -n "$GARAGE" ] || GARAGE="$(bash "$ROOT/scripts/garage.sh" | sed -n 's/^CAIRN_GARAGE=//p')"
    [ -x "$GARAGE" ] || die "no Garage binary (scripts/garage.sh provides it, or set CAIRN_GARAGE)"
    GARAGE_VERSION="$("$GARAGE" --version 2>&1 | head -n1)"
    GARAGE_DIR="$WORK/garage"
    for ((n = 1; n <= S3_NODES; n++)); do
        dir="$GARAGE_DIR/node$n"
        mkdir -p "$dir"
        s3_port="$(free_port)"
        rpc_port="$(free_port)"
        admin="127.0.0.1:$(free_port)"
        if [ "$n" = 1 ]; then
            GARAGE_ADMIN="$admin"
            S3_ENDPOINT="http://127.0.0.1:$s3_port"
        fi
        cat >"$dir/garage.toml" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
block_size = "1M"
compression_level = "none"
replication_factor = $S3_NODES
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(printf cairn-bench-rpc | sha256sum | cut -c1-64)"

[s3_api]
api_bind_addr = "127.0.0.1:$s3_port"
s3_region = "$S3_REGION"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "$admin"
metrics_token = "$GARAGE_METRICS_TOKEN"
EOF
        RUST_LOG=garage=warn "$GARAGE" -c "$dir/garage.toml" server </dev/null >>"$dir/garage.log" 2>&1 &
        GARAGE_PIDS+=($!)
    done
    log ""
    log "=== Garage ($GARAGE_VERSION), $S3_NODES node(s) in $GARAGE_DIR, S3 at $S3_ENDPOINT"
    retry curl -s -o /dev/null "$S3_ENDPOINT/" || die "Garage did not come up (see $GARAGE_DIR/node1/garage.log)"
    for ((n = 1; n <= S3_NODES; n++)); do
        id="$(retry_output env RUST_LOG=warn "$GARAGE" -c "$GARAGE_DIR/node$n/garage.toml" node id -q </dev/null)" \
            || die "Garage node $n did not say its id (see $LOG)"
        ids+=("$id")
        [ "$n" = 1 ] || retry garage_cli node connect "$id" || die "could not connect Garage node $n (see $LOG)"
    done
    for ((n = 1; n <= S3_NODES; n++)); do
        id="${ids[$((n - 1))]}"
        garage_cli layout assign -z "dc$n" -c 1G "${id%%@*}" >>"$LOG" 2>&1 || die "could not assign Garage node $n (see $LOG)"
    done
    garage_cli layout apply --version 1 >>"$LOG" 2>&1 \
        && retry garage_cli key import --yes -n bench "$S3_KEY_ID" "$S3_SECRET" \
        && retry garage_cli bucket create "$S3_BUCKET" \
        && garage_cli bucket allow --read --write --owner "$S3_BUCKET" --key bench >>"$LOG" 2>&1 \
        && retry s3_curl "$S3_ENDPOINT/$S3_BUCKET/?list-type=2" \
        || die "could not set up Garage (see $LOG)"
    export AWS_ACCESS_KEY_ID="$S3_KEY_ID" AWS_SECRET_ACCESS_KEY="$S3_SECRET" \
        AWS_REGION="$S3_REGION" AWS_DEFAULT_REGION="$S3_REGION"
    [ -z "$S3_DELAY_MS" ] || delay_start
}

# A TCP proxy that forwards each direction's bytes DELAY seconds after it read them, reading
# on meanwhile, so a link with that latency keeps its throughput (what tc netem would do; this
# kernel has no netem). Arguments: listen port, target port, delay in seconds.
DELAY_PY='
import asyncio, sys
listen, target, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
async def pipe(reader, writer):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    async def read():
        try:
            while True:
                data = await reader.read(262144)
                await queue.put((loop.time() + delay, data))
                if not data:
                    break
        except Exception:
            await queue.put((loop.time(), b""))
    async def write():
        try:
            while True:
                due, data = await queue.get()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()
    await asyncio.gather(read(), write())
async def handle(reader, writer):
    upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()
asyncio.run(main())
'

# delay_start: puts the delaying proxy in front of the first Garage node; S3_ENDPOINT is the
# proxy from then on. Untimed.
delay_start() {
    local port target
    port="$(free_port)"
    target="${S3_ENDPOINT##*:}"
    python3 -c "$DELAY_PY" "$port" "$target" "$(awk -v ms="$S3_DELAY_MS" 'BEGIN { print ms / 1000 }')" >>"$LOG" 2>&1 &
    DELAY_PID=$!
    S3_ENDPOINT="http://127.0.0.1:$port"
    retry s3_curl "$S3_ENDPOINT/$S3_BUCKET/?list-type=2" || die "the delaying proxy did not come up (see $LOG)"
    log "=== S3 through a proxy delaying ${S3_DELAY_MS} ms each way, at $S3_ENDPOINT"
}

# garage_cpu: CPU seconds all Garage nodes have used so far.
garage_cpu() {
    local pid total=0
    for pid in "${GARAGE_PIDS[@]}"; do
        total="$(awk -v a="$total" -v b="$(proc_cpu "$pid")" 'BEGIN { printf "%.2f", a + b }')"
    done
    echo "$total"
}

# retry_output CMD...: like retry, printing CMD's output once it succeeds.
retry_output() {
    local i out
    for ((i = 0; i < 600; i++)); do
        if out="$("$@" 2>>"$LOG")"; then
            printf '%s\n' "$out"
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# s3_curl URL: a request signed for the bench's key (Garage wants the payload hash named).
s3_curl() {
    curl -sS --fail-with-body -o /dev/null -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
        --aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$S3_KEY_ID:$S3_SECRET" "$1"
}

# s3_requests: the S3 requests Garage served so far, by type, as "GET PUT LIST HEAD DELETE other".
s3_requests() {
    curl -sS --fail -H "Authorization: Bearer $GARAGE_METRICS_TOKEN" "http://$GARAGE_ADMIN/metrics" | awk '
        /^api_s3_request_counter\{/ {
            match($0, /api_endpoint="[^"]*"/)
            e = substr($0, RSTART + 14, RLENGTH - 15)
            if (e == "GetObject") k = "GET"
            else if (e ~ /^(PutObject|UploadPart|UploadPartCopy|CopyObject|CreateMultipartUpload|CompleteMultipartUpload)$/) k = "PUT"
            else if (e ~ /^List/) k = "LIST"
            else if (e ~ /^Head/) k = "HEAD"
            else if (e ~ /^(DeleteObject|DeleteObjects|AbortMultipartUpload)$/) k = "DELETE"
            else k = "other"
            n[k] += $NF
        }
        END { printf "%d %d %d %d %d %d", n["GET"], n["PUT"], n["LIST"], n["HEAD"], n["DELETE"], n["other"] }'
}


# s3_tool_env TOOL RUN: point the tool at its repository s3:ENDPOINT/bench/TOOL-RUN.
s3_tool_env() {
    local t=$1 run=$2
    case "$t" in
        cairn) export CAIRN_REPO="s3:$S3_ENDPOINT/$S3_BUCKET/$t-$run" ;;
        restic) export RESTIC_REPOSITORY="s3:$S3_ENDPOINT/$S3_BUCKET/$t-$run" ;;
        rustic)
            export RUSTIC_REPOSITORY="opendal:s3" OPENDAL_BUCKET="$S3_BUCKET" OPENDAL_ROOT="/$t-$run" \
                OPENDAL_ENDPOINT="$S3_ENDPOINT" OPENDAL_REGION="$S3_REGION" \
                OPENDAL_ACCESS_KEY_ID="$S3_KEY_ID" OPENDAL_SECRET_ACCESS_KEY="$S3_SECRET"
            ;;
    esac
}

# s3_measured TOOL STEP RUN R0 G0: appends Garage's CPU since G0 and the requests since R0 to
# the step's result.
s3_measured() {
    local key="$1|$2|$3" r0=$4 g0=$5 g1 r1
    g1="$(garage_cpu)"
    r1="$(s3_requests)"
    RES[$key]="${RES[$key]} $(awk -v a="$g0" -v b="$g1" 'BEGIN { printf "%.2f", b - a }') $(
        awk -v a="$r0" -v b="$r1" 'BEGIN { n = split(a, x, " "); split(b, y, " ")
            for (i = 1; i <= n; i++) printf "%s%d", (i > 1 ? " " : ""), y[i] - x[i] }')"
    log "  = garage cpu, GET PUT LIST HEAD DELETE other: ${RES[$key]#* * * }"
}

# s3_mount_step TOOL RUN DIR: row s5, a read of the latest snapshot with tar through a fresh
# mount (see mount_read), with the requests the mount made from its start to its end.
s3_mount_step() {
    local r0 g0
    r0="$(s3_requests)"
    g0="$(garage_cpu)"
    if mount_read "$1" s5 "$2" "$3" "$TAR_CMD"; then
        s3_measured "$1" s5 "$2" "$r0" "$g0"
    fi
}

# run_s3_tool TOOL RUN: init (untimed), the backups of A, A again and B, the restore and the
# mount read, in a fresh repository s3:ENDPOINT/bench/TOOL-RUN and a fresh cache. Each step's
# result is "wall cpu rss garage_cpu GET PUT LIST HEAD DELETE other".
run_s3_tool() {
    local t=$1 run=$2 d="$WORK/tools/$1" step r0 g0 status
    rm -rf "$d"
    mkdir -p "$d/cache" "$d/restore"
    tool_env "$t" "$d"
    s3_tool_env "$t" "$run"
    log ""
    log "=== run $run: $t on S3, $S3_ENDPOINT/$S3_BUCKET/$t-$run"
    log_cmd init "$t"
    status=0
    case "$t" in
        cairn) "$CAIRN" init --repo "$CAIRN_REPO" >>"$LOG" 2>&1 || status=$? ;;
        restic) restic init >>"$LOG" 2>&1 || status=$? ;;
        rustic) rustic init >>"$LOG" 2>&1 || status=$? ;;
    esac
    if [ "$status" != 0 ]; then
        say "    $t: init FAILED (see $LOG)"
        for step in "${S3_STEPS[@]}"; do RES[$t|$step|$run]=FAILED; done
        return
    fi
    for step in "${S3_STEPS[@]}"; do
        case "$step" in
            s1) sync_src "$A"; backup_cmd "$t" 1 ;;
            s2) backup_cmd "$t" 2 ;;
            s3) sync_src "$B"; backup_cmd "$t" 3 ;;
            s4) restore_cmd "$t" "$d/restore" ;;
            s5)
                if [ -n "${CAN_MOUNT[$t]:-}" ]; then
                    s3_mount_step "$t" "$run" "$d"
                else
                    RES[$t|$step|$run]="n/a (no mount command)"
                fi
                say "    $t ${STEP_LABEL[$step]}: ${RES[$t|$step|$run]}"
                continue
                ;;
        esac
        r0="$(s3_requests)"
        g0="$(garage_cpu)"
        if timed "$t" "$step" "$run" "${CMD[@]}"; then
            s3_measured "$t" "$step" "$run" "$r0" "$g0"
            if [ "$step" = s4 ] && [ "$VERIFY" = 1 ] && [ "$run" = 1 ]; then
                verify_restore "$t" "$(inside "$d/restore")"
            fi
        fi
        say "    $t ${STEP_LABEL[$step]}: ${RES[$t|$step|$run]}"
    done
    rm -rf "$d"
}

# s3_row TOOL STEP: one line of the S3 table; a peer's row adds the ratios cairn/peer.
s3_row() {
    local t=$1 s=$2 wall f vals=() ratios="— | — | — | —" cw cc cr creq req
    wall="$(median "$t" "$s" 1)"
    case "$wall" in
        FAILED | n/a*)
            printf '| %s | %s | %s | | | | | | | | | | | — | — | — | — |\n' "${STEP_LABEL[$s]}" "$t" "$wall"
            return
            ;;
    esac
    for f in 1 2 3 4 5 6 7 8 9 10; do vals+=("$(median "$t" "$s" "$f")"); done
    req="$(awk -v a="${vals[*]:4}" 'BEGIN { n = split(a, x, " "); for (i = 1; i <= n; i++) s += x[i]; print s }')"
    cw="$(median cairn "$s" 1 2>/dev/null || echo FAILED)"
    if [ "$t" != cairn ] && [ -n "${VERSION[cairn]:-}" ] && [[ "$cw" != FAILED && "$cw" != n/a* ]]; then
        cc="$(median cairn "$s" 2)"
        cr="$(median cairn "$s" 3)"
        creq=0
        for f in 5 6 7 8 9 10; do creq="$(awk -v a="$creq" -v b="$(median cairn "$s" "$f")" 'BEGIN { print a + b }')"; done
        ratios="$(ratio "$cw" "${vals[0]}") | $(ratio "$cc" "${vals[1]}") | $(ratio "$cr" "${vals[2]}") | $(ratio "$creq" "$req")"
    fi
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${STEP_LABEL[$s]}" "$t" \
        "$(fmt "${vals[0]}" 1 2)" "$(fmt "${vals[1]}" 1 2)" "$(fmt "${vals[2]}" 1024 0)" "$(fmt "${vals[3]}" 1 2)" \
        "$(fmt "${vals[4]}" 1 0)" "$(fmt "${vals[5]}" 1 0)" "$(fmt "${vals[6]}" 1 0)" "$(fmt "${vals[7]}" 1 0)" \
        "$(fmt "${vals[8]}" 1 0)" "$(fmt "${vals[9]}" 1 0)" "$req" "$ratios"
}

# s3_report: the S3 rows as Markdown.
s3_report() {
    local t s nodes="one node (replication_factor 1)"
    [ "$S3_NODES" = 1 ] || nodes="$S3_NODES nodes on one machine (replication_factor $S3_NODES, consistency_mode consistent; the tools talk to the first)"
    echo "# cairn benchmark: S3 (Garage on loopback, $S3_NODES node(s))"
    echo
    echo "- Command: \`$CMDLINE\`"
    echo "- Date: $START_DATE; host $(hostname), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r); work directory (Garage's data and metadata, caches, restores) on $fstype"
    echo "- cairn: ${VERSION[cairn]:-not benchmarked} (commit $CAIRN_COMMIT; binary $CAIRN_ORIG built $CAIRN_BUILT)"
    for t in restic borg rustic bupstash; do
        if [ -n "${VERSION[$t]:-}" ]; then echo "- $t: ${VERSION[$t]}"; fi
        if [ -n "${SKIPPED[$t]:-}" ]; then echo "- $t: skipped, ${SKIPPED[$t]}"; fi
    done
    echo "- Garage: $GARAGE_VERSION, $nodes, sqlite metadata, no fsync, block_size 1M, no compression, S3 API at $S3_ENDPOINT"
    echo "- Version A: $DATA_DESC — $A_STATS"
    echo "- Version B: $B_DESC — $B_STATS"
    echo "- Settings: encryption on (cairn password mode, restic and rustic repository password), cairn's default zstd level 3, restic \`auto\`, rustic's default; a fresh repository (…/$S3_BUCKET/TOOL-RUN) and cache per tool and run; each version synced into one path before its backup"
    [ -z "$S3_DELAY_MS" ] || echo "- Link: the tools reach Garage through a TCP proxy on loopback holding every byte $S3_DELAY_MS ms each way ($((2 * S3_DELAY_MS)) ms round trip; Python asyncio, reads of 256 KiB)"
    echo "- Page cache: \`sync; echo 3 > /proc/sys/vm/drop_caches\` before every timed step (Garage's files included)"
    echo "- Each cell: median of $RUNS run(s). Wall and CPU (user+sys) in seconds and peak RSS in MiB are the tool's (s5: tar's wall; CPU of tar and the mount daemon; the daemon's RSS); Garage CPU is all nodes' CPU seconds during the step."
    echo "  Requests: the step's delta of Garage's \`api_s3_request_counter\` at the node the tools talk to: GET = GetObject; PUT = PutObject, UploadPart(Copy), CopyObject, Create/CompleteMultipartUpload;"
    echo "  LIST = List*; HEAD = Head*; DELETE = DeleteObject(s), AbortMultipartUpload; other = the rest. A peer's row gives cairn/peer for wall, CPU, RSS and all requests (below 1: cairn less)."
    echo
    echo "| Step | Tool | Wall s | CPU s | Peak RSS MiB | Garage CPU s | GET | PUT | LIST | HEAD | DELETE | other | requests | cairn/peer wall | CPU | RSS | requests |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for s in "${S3_STEPS[@]}"; do
        for t in "${TOOLS[@]}"; do s3_row "$t" "$s"; done
    done
    echo
    local rw mw
    rw="$(median cairn s4 1)"
    mw="$(median cairn s5 1)"
    if [[ "$rw" =~ ^[0-9.]+$ && "$mw" =~ ^[0-9.]+$ ]]; then
        echo "- cairn mount read throughput / its restore throughput (same bytes): $(awk -v r="$rw" -v m="$mw" 'BEGIN { printf "%.2f", r / m }') (target >= 0.7)"
    fi
    for t in "${TOOLS[@]}"; do
        [ -z "${NOTES[$t]:-}" ] || echo "- $t: ${NOTES[$t]}"
    done
    echo "- Full log: $LOG"
}

# ---------------------------------------------------------------------------------------------
# The runs
# ---------------------------------------------------------------------------------------------

START_DATE="$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
{
    echo "cairn benchmark: $CMDLINE"
    echo "date: $START_DATE; work: $WORK ($fstype)"
    for t in "${TOOLS[@]}"; do echo "$t: ${VERSION[$t]}"; done
    echo "A: $DATA_DESC: $A_STATS"
    echo "B: $B_DESC: $B_STATS"
} >>"$LOG"

if [ "$S3" = 1 ]; then
    garage_start
    for ((run = 1; run <= RUNS; run++)); do
        say "== S3 run $run of $RUNS (page cache dropped before every timed step; each line: wall s, CPU s, peak RSS KiB, Garage CPU s, requests GET PUT LIST HEAD DELETE other)"
        for t in "${TOOLS[@]}"; do
            say "  -- $t"
            run_s3_tool "$t" "$run"
        done
    done
else
    for ((run = 1; run <= RUNS; run++)); do
        say "== run $run of $RUNS (page cache dropped before every timed step; each line: wall s, CPU s, peak RSS KiB, repository bytes)"
        run_floors "$run"
        for t in "${TOOLS[@]}"; do
            say "  -- $t"
            run_tool "$t" "$run"
            if [ "$t" = cairn ]; then
                run_lowimpact "$run"
                if command -v rsync >/dev/null; then run_netsync "$run"; fi
            fi
        done
    done
fi

# ---------------------------------------------------------------------------------------------
# Results: the median over the runs of each number, one Markdown table
# ---------------------------------------------------------------------------------------------

# median TOOL STEP FIELD: the median of a field (1 wall, 2 cpu, 3 rss, 4 size) over the runs;
# FAILED if any run failed, the text itself when not measured.
median() {
    local t=$1 s=$2 f=$3 r v vals=()
    for ((r = 1; r <= RUNS; r++)); do
        v="${RES[$t|$s|$r]:-FAILED}"
        case "$v" in
            FAILED) echo FAILED; return ;;
            n/a*) echo "$v"; return ;;
        esac
        vals+=("$(awk -v f="$f" '{ print $f }' <<<"$v")")
    done
    printf '%s\n' "${vals[@]}" | sort -g | awk '{ a[NR] = $1 } END {
        if (a[1] == "") { print "-"; exit }
        if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

fmt() {   # fmt VALUE SCALE DECIMALS: numbers divided by SCALE; text passes through
    case "$1" in
        '' | -) echo "-" ;;
        *[!0-9.e+-]*) echo "$1" ;;
        *) awk -v v="$1" -v s="$2" -v d="$3" 'BEGIN { printf "%.*f", d, v / s }' ;;
    esac
}

row() {   # row TOOL STEP: one table line
    local t=$1 s=$2 wall cpu rss size ratio="" cw
    wall="$(median "$t" "$s" 1)"
    case "$wall" in
        FAILED | n/a*)
            printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${STEP_LABEL[$s]}" "$t" "$wall" "$wall" "$wall" "$wall" "—"
            return
            ;;
    esac
    cpu="$(median "$t" "$s" 2)"
    rss="$(median "$t" "$s" 3)"
    size="$(median "$t" "$s" 4)"
    if [ "$t" = cairn ] || [ "$t" = floor ]; then
        ratio="—"
    else
        cw="$(median cairn "${s%_rsync}" 1)"
        case "$cw" in
            FAILED | n/a* | -) ratio="—" ;;
            *) ratio="$(awk -v a="$cw" -v b="$wall" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "—" }')" ;;
        esac
    fi
    [ "$t" = floor ] && size="-"
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "${STEP_LABEL[$s]}" "$t" \
        "$(fmt "$wall" 1 2)" "$(fmt "$cpu" 1 2)" "$(fmt "$rss" 1024 0)" "$(fmt "$size" 1048576 1)" "$ratio"
}

isnum() { case "$1" in '' | - | *[!0-9.e+-]*) return 1 ;; esac; }

# ratio A B: A / B with two decimals, n/a unless both are numbers and B > 0.
ratio() {
    if isnum "$1" && isnum "$2"; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'
    else
        echo n/a
    fi
}

# slowdown A B: (A / B - 1) in percent, signed, one decimal; n/a as for ratio.
slowdown() {
    if isnum "$1" && isnum "$2"; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%+.1f%%", (a / b - 1) * 100; else print "n/a" }'
    else
        echo n/a
    fi
}

# verdict VALUE OP LIMIT: "met" or "missed" (OP: le, ge, lt), nothing when VALUE is n/a.
verdict() {
    isnum "${1%\%}" || return 0
    awk -v v="${1%\%}" -v op="$2" -v l="$3" 'BEGIN {
        ok = (op == "le" ? v <= l : op == "ge" ? v >= l : v < l); printf "; %s", (ok ? "met" : "missed") }'
}

# The I/O scheduler of the disk under DIR ("unknown" when not found): ionice's idle class,
# which --low-priority uses, depends on it.
io_scheduler() {
    local dev name sys
    dev="$(findmnt -no SOURCE -T "$1" 2>/dev/null | head -n1 || true)"
    name="$(basename "${dev:-unknown}")"
    sys="/sys/class/block/$name"
    [ -f "$sys/queue/scheduler" ] || sys="$(readlink -f "$sys" 2>/dev/null || true)/.."
    if [ -f "$sys/queue/scheduler" ]; then
        sed -n 's/.*\[\(.*\)\].*/\1/p' "$sys/queue/scheduler"
    else
        echo unknown
    fi
}

if [ "$S3" = 1 ]; then
    s3_report >"$OUT"
    echo
    cat "$OUT"
    exit 0
fi

# cairn's target ratios, from the medians.
B1="$(median cairn b1 1)"
RS="$(median cairn rs 1)"
MT="$(median cairn mt 1)"
FCP="$(median floor f_cp 1)"
FTA="$(median floor f_tarA 1)"
FMEM="$(median floor f_mem 1)"
FG0="$(median cairn fg 1)"
FGL="$(median cairn fg_low 1)"
FGP="$(median cairn fg_plain 1)"
if isnum "$FTA" && isnum "$FMEM"; then
    FLOOR_A="$(awk -v a="$FTA" -v b="$FMEM" 'BEGIN { print (a > b ? a : b) }')"
else
    FLOOR_A=n/a
fi
R_B1="$(ratio "$B1" "$FLOOR_A")"
R_RS="$(ratio "$RS" "$FCP")"
R_MT="$(ratio "$RS" "$MT")"
S_LOW="$(slowdown "$FGL" "$FG0")"
S_PLAIN="$(slowdown "$FGP" "$FG0")"
BT="$(median cairn bt 1)"
FMEMTAR="$(median floor f_memtar 1)"
R_BT="$(ratio "$BT" "$FMEMTAR")"
# repo_vs TOOL STEP: cairn's repository size after STEP divided by TOOL's (with the verdict
# against 1.0 for bupstash, the target); wall_vs TOOL STEP LIMIT: the same for wall time against LIMIT.
repo_vs() {
    local v
    v="$(ratio "$(median cairn "$2" 4)" "$(median "$1" "$2" 4)")"
    if [ "$1" = bupstash ]; then echo "$v$(verdict "$v" le 1.0)"; else echo "$v"; fi
}
wall_vs() {
    local v
    v="$(ratio "$(median cairn "$2" 1)" "$(median "$1" "$2" 1)")"
    echo "$v$(verdict "$v" le "$3")"
}

{
    echo "# cairn benchmark"
    echo
    echo "- Command: \`$CMDLINE\`"
    echo "- Date: $START_DATE; host $(hostname), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, Linux $(uname -r); work directory on $fstype"
    echo "- cairn: ${VERSION[cairn]:-not benchmarked} (commit $CAIRN_COMMIT; binary $CAIRN_ORIG built $CAIRN_BUILT)"
    for t in restic borg rustic bupstash; do
        if [ -n "${VERSION[$t]:-}" ]; then echo "- $t: ${VERSION[$t]}"; fi
        if [ -n "${SKIPPED[$t]:-}" ]; then echo "- $t: skipped, ${SKIPPED[$t]}"; fi
    done
    echo "- Version A: $DATA_DESC — $A_STATS"
    echo "- Version B: $B_DESC — $B_STATS"
    echo "- Every backup reads the same path ($SRC): A, then B, is rsync'ed into it untimed, so stat caches and parents carry over"
    echo "- Settings: encryption on everywhere (cairn password mode; restic/rustic repository password; borg repokey-blake2; bupstash key file);"
    echo "  compression zstd level 3 where settable (cairn default, borg \`--compression zstd,3\`), restic \`auto\` (its default), rustic and bupstash defaults;"
    echo "  a fresh repository and cache per tool and run"
    echo "- Page cache: \`sync; echo 3 > /proc/sys/vm/drop_caches\` before every timed step of every tool (cold cache), except the warm floor"
    echo "- Each cell: median of $RUNS run(s). Wall and CPU (user+sys) in seconds, peak RSS in MiB, repository size in MiB after the step (apparent bytes)."
    echo "  cairn/tool: cairn's wall time divided by the tool's for the same step (below 1: cairn is faster)."
    echo
    echo "| Step | Tool | Wall s | CPU s | Peak RSS MiB | Repo MiB | cairn/tool wall |"
    echo "|---|---|---:|---:|---:|---:|---:|"
    for s in "${STEP_NAMES[@]}"; do
        for t in "${TOOLS[@]}"; do row "$t" "$s"; done
    done
    if [ -n "${VERSION[cairn]:-}" ]; then
        for s in "${LOW_STEPS[@]}"; do row cairn "$s"; done
        for s in "${NET_STEPS[@]}"; do
            row cairn "$s"
            row rsync "${s}_rsync"
        done
    fi
    for s in "${FLOOR_STEPS[@]}"; do row floor "$s"; done
    echo
    echo "Notes:"
    echo
    echo "- cairn's targets (from the medians above):"
    echo "  - first backup vs floor: b1 wall / max(cold read of A, in-memory pipeline) = $R_B1 (target ≤ 1.5$(verdict "$R_B1" le 1.5); $(fmt "$B1" 1 2) s / max($(fmt "$FTA" 1 2) s, $(fmt "$FMEM" 1 2) s))"
    echo "  - restore vs cp -a: rs wall / f_cp wall = $R_RS (target ≤ 1.2$(verdict "$R_RS" le 1.2); $(fmt "$RS" 1 2) s / $(fmt "$FCP" 1 2) s)"
    echo "  - mount read vs restore throughput: rs wall / mt wall = $R_MT (target ≥ 0.7$(verdict "$R_MT" ge 0.7); same bytes, so the throughput ratio is the inverse wall ratio; $(fmt "$RS" 1 2) s / $(fmt "$MT" 1 2) s)"
    echo "  - foreground job during backup --low-priority: (6b/6a − 1) = $S_LOW (target < 10%$(verdict "$S_LOW" lt 10))"
    echo "  - foreground job during plain backup: (6c/6a − 1) = $S_PLAIN"
    echo "  - one large file vs the in-memory pipeline on it: bt wall / f_memtar wall = $R_BT (target ≤ 1.15$(verdict "$R_BT" le 1.15); $(fmt "$BT" 1 2) s / $(fmt "$FMEMTAR" 1 2) s)"
    for t in rustic bupstash; do
        [ -n "${VERSION[$t]:-}" ] || continue
        echo "  - one large file vs $t: cairn bt wall / $t bt wall = $(wall_vs "$t" bt 0.85) (target ≤ 0.85)"
    done
    for t in "${TOOLS[@]}"; do
        [ "$t" = cairn ] && continue
        echo "  - repository size vs $t: cairn / $t after b1 = $(repo_vs "$t" b1), after b3 = $(repo_vs "$t" b3), after bt = $(repo_vs "$t" bt) (target vs bupstash ≤ 1.0)"
    done
    echo "- Reads (mount rows and floors): \`tar cf - -C DIR . | wc -c\` and \`find DIR/ | wc -l\`."
    echo "- Mount rows (5a, 5b): each read gets a fresh mount of the whole repository; mounting (until the latest snapshot is listable) is untimed."
    echo "  Wall is the reader's; CPU adds the FUSE daemon's CPU during the read; peak RSS is the larger of the reader's and the daemon's."
    echo "- Floors are measured on version B in $SRC, the tree that is restored and mounted, except the two on version A ($A), what the first backup reads."
    echo "- In-memory pipeline floor: \`cairn pipeline-speed --json A\` loads A's files into memory in batches and runs chunk+hash+compress+seal on all cores."
    echo "  Its wall time is the pipeline's alone and excludes loading the files; its CPU time (and peak RSS) is the whole command's and includes the loading."
    echo "  The same on A as one tar (f_memtar): one file, cut on one thread and sealed on all."
    echo "- Row 8: each tool backs up $BIG_DIR, holding only A as one uncompressed tar ($(stat -c %s "$BIG_DIR/A.tar" 2>/dev/null || echo ?) bytes), into a fresh repository and cache."
    if [ -n "${VERSION[cairn]:-}" ]; then
        echo "- Rows 6a-6c (cairn only): the foreground job \`tar cf - -C $FG_DIR . | gzip -1 | wc -c\` with a cold cache; wall, CPU and peak RSS are the job's."
        echo "  In 6b and 6c, \`cairn backup --low-priority\` (6b) or \`cairn backup\` (6c) of version B ($B) into a fresh repository starts right before the job;"
        echo "  after the job, the backup is waited for (untimed) and must succeed. I/O scheduler of the disk under A: $(io_scheduler "$A")."
    fi
    if [ -n "${VERSION[cairn]:-}" ] && [ -n "${COUNT[cairn|ns_1pc|1]:-}" ]; then
        echo "- Rows 7a-7b (cairn against rsync, loopback): \`cairn serve --source\` + \`cairn sync --delete URL DIR\` and an rsync daemon + \`rsync -a --delete --stats\`, copying A, then updating the copy after 1% of A's files changed."
        for s in "${NET_STEPS[@]}"; do
            echo "  - ${STEP_LABEL[$s]}, bytes moved (run 1): cairn ${COUNT[cairn|$s|1]:-?} (received); rsync ${COUNT[rsync|${s}_rsync|1]:-?} received + ${COUNT[rsync_sent|${s}_rsync|1]:-?} sent; cairn/rsync received = $(ratio "${COUNT[cairn|$s|1]:-}" "${COUNT[rsync|${s}_rsync|1]:-}")"
        done
        echo "  - ${NOTES[netsync]:-}"
    fi
    for t in "${TOOLS[@]}"; do
        line=""
        if [ -z "${CAN_MOUNT[$t]:-}" ]; then
            case "$t" in
                rustic) line+="mount rows n/a: this rustic build has no \`mount\` command (rustic-rs's cargo feature \`mount\` is off by default). " ;;
                bupstash) line+="mount rows n/a: bupstash has no FUSE mount. " ;;
                *) line+="mount rows n/a: no FUSE binding for it here. " ;;
            esac
        fi
        if [ -n "${COUNT[$t|mt|1]:-}" ]; then
            line+="mount read (run 1): tar ${COUNT[$t|mt|1]} bytes, find ${COUNT[$t|mf|1]:-?} entries. "
        fi
        if [ -n "${COUNT[$t|fg|1]:-}" ]; then
            line+="foreground job output (run 1): ${COUNT[$t|fg|1]} bytes of gzip. "
        fi
        line+="${NOTES[$t]:-}"
        [ -z "$line" ] || echo "- $t: $line"
    done
    echo "- floor (run 1): tar of the source ${COUNT[floor|f_tarc|1]:-?} bytes, find ${COUNT[floor|f_find|1]:-?} entries; tar of A ${COUNT[floor|f_tarA|1]:-?} bytes; in-memory pipeline ${MEM_INFO[f_mem|1]:-?}; on A as one tar ${MEM_INFO[f_memtar|1]:-?}."
    echo "- Full log: $LOG"
} >"$OUT"

echo
cat "$OUT"
