"""Prints pgt-train's requirements, one a line: pyproject.toml's dependencies plus those of the extras named in
argv[1] (comma-separated). The Dockerfile installs them before it copies the sources, so that a change to the
sources reuses the dependency layer. Runs on the base image's python3, which may be 3.10 (no tomllib)."""
import sys

try:
    import tomllib
except ImportError:  # Python 3.10 (Ubuntu 22.04, NGC 24.xx): pip ships the same parser as tomli
    try:
        import tomli as tomllib
    except ImportError:
        from pip._vendor import tomli as tomllib


def main(extras_arg: str) -> None:
    with open("pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    known = project.get("optional-dependencies", {})
    extras = [e.strip() for e in extras_arg.split(",") if e.strip()]
    unknown = [e for e in extras if e not in known]
    if unknown:
        print(f"EXTRAS: unknown extra(s) {', '.join(unknown)}; pgt-train has {', '.join(sorted(known))}",
              file=sys.stderr)
        sys.exit(2)
    print("\n".join(project["dependencies"] + [d for e in extras for d in known[e]]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
