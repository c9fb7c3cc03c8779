"""cluster/Dockerfile, without Docker: both stages on debian:bookworm, the runtime stage installs
a package for every shared library the locally built binaries load (found with ldd + dpkg -S),
the build targets exist in the CMake files, and the image runs throttlexd as a non-root user with
a /readyz health check."""
import os
import pathlib
import re
import subprocess

from common import CLUSTER, ROOT

DOCKERFILE = CLUSTER / "Dockerfile"


def instructions(text):
    """[(INSTRUCTION, arguments)] with continuation lines joined and comments dropped."""
    text = re.sub(r"^\s*#.*\n", "", text, flags=re.M)
    text = re.sub(r"\\\n", " ", text)
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", text, re.M)]


def stages(ins):
    out = []
    for name, args in ins:
        if name == "FROM":
            out.append((args, []))
        elif out:
            out[-1][1].append((name, args))
    return out


def apt_installed(stage):
    pkgs = set()
    for name, args in stage:
        if name == "RUN":
            for part in re.findall(r"apt-get install ([^&;|]*)", args):
                pkgs |= {w for w in part.split() if not w.startswith("-")}
    return pkgs


def variants(path):
    """A library's path, its target, and their twins across the /usr merge (/lib -> /usr/lib)."""
    real = os.path.realpath(path)
    return list(dict.fromkeys([path, real, re.sub(r"^/lib", "/usr/lib", path), re.sub(r"^/usr/lib", "/lib", real)]))


def dpkg_owners(paths):
    """{path: Debian package} for the paths some installed package holds (one dpkg -S call)."""
    out = subprocess.run(["dpkg", "-S", *paths], capture_output=True, text=True).stdout
    owners = {}
    for line in out.splitlines():
        pkgs, _, path = line.partition(": ")
        owners[path.strip()] = pkgs.split(",")[0].split(":")[0].strip()
    return owners


def needed_packages(problems, files):
    """{package: {libraries}} for what `ldd` resolves outside the build tree."""
    libs = {}
    for f in files:
        out = subprocess.run(["ldd", str(f)], capture_output=True, text=True).stdout
        problems.check("not found" not in out, "Dockerfile", f"ldd {f}: a library is not found here")
        for lib, path in re.findall(r"^\s*(\S+) => (/\S+)", out, re.M):
            if "libthrottlex_" not in lib:  # ours: copied into the image
                libs[path] = lib
    owners = dpkg_owners(sorted({v for p in libs for v in variants(p)}))
    need = {}
    for path, lib in libs.items():
        pkg = next((owners[v] for v in variants(path) if v in owners), None)
        if problems.check(pkg, "Dockerfile", f"no Debian package holds {path} ({lib})"):
            need.setdefault(pkg, set()).add(lib)
    return need


def cmake_sources():
    """The text of the repository's CMake files, build trees left out."""
    texts = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(("build", "."))]
        texts += [pathlib.Path(dirpath, f).read_text() for f in filenames
                  if f == "CMakeLists.txt" or f.endswith(".cmake")]
    return "\n".join(texts)


def check(problems, bin_dir):
    bin_dir = pathlib.Path(bin_dir)
    ins = instructions(DOCKERFILE.read_text())
    st = stages(ins)
    at = "cluster/Dockerfile"
    problems.check(len(st) >= 2, at, "want a multi-stage build")
    for base, _ in st:
        problems.check(base.split()[0] == "debian:bookworm", at, f"stage FROM {base!r}: want debian:bookworm")
    runtime = st[-1][1]
    last = dict(runtime)  # the last of each instruction in the runtime stage
    shipped = [bin_dir / n for n in ("throttlexd", "throttlectl", "throttlex-bench")]
    shipped += sorted((bin_dir.parent / "lib").glob("libthrottlex_client.so.*.*.*"))
    for f in shipped:
        problems.check(f.is_file(), at, f"{f} is not built here: cannot check its libraries")
    have = apt_installed(runtime)
    for pkg, libs in sorted(needed_packages(problems, [f for f in shipped if f.is_file()]).items()):
        problems.check(pkg in have, at, f"the runtime stage does not install {pkg} ({', '.join(sorted(libs))})")

    build_cmds = " ".join(a for _, stage in st[:-1] for n, a in stage if n == "RUN")
    targets = [t for m in re.finditer(r"--target((?:\s+[\w-]+)+)", build_cmds) for t in m.group(1).split()]
    problems.check(targets, at, "the build stage names no --target")
    cmake_text = cmake_sources()
    for target in targets:
        problems.check(re.search(rf"add_(?:executable|library)\(\s*{re.escape(target)}\b", cmake_text), at,
                       f"build target {target!r} is not defined in any CMake file")
    for src in re.findall(r"(?:^|\s)((?:scripts|docs)/\S+)", " ".join(a for n, a in ins if n in ("COPY", "RUN"))):
        problems.check((ROOT / src).exists(), at, f"{src} does not exist")

    user = last.get("USER", "root").split(":")[0]
    problems.check(user not in ("root", "0"), at, "the runtime stage must set a non-root USER")
    problems.check("/readyz" in last.get("HEALTHCHECK", ""), at, "HEALTHCHECK must ask /readyz")
    problems.check("throttlexd" in last.get("ENTRYPOINT", ""), at, "ENTRYPOINT must be throttlexd")
    exposed = {p.split("/")[0] for n, a in runtime if n == "EXPOSE" for p in a.split()}
    problems.check({"8080", "7400", "9464", "7946"} <= exposed, at, f"EXPOSE {sorted(exposed)}: want 8080 7400 9464 7946")
    ignore = (ROOT / ".dockerignore").read_text().split() if (ROOT / ".dockerignore").exists() else []
    problems.check("build" in ignore, ".dockerignore", "must leave the build tree out of the context")
