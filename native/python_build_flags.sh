# Sourced by the bridges' build.sh: the embedding flags of the Python the bridge will run.
# In: PYTHON (an interpreter or a venv's python). Out: base_python (the venv's base
# interpreter, whose python3-config and libpython are used), cflags, ldflags, libdir, soname.
base_python="$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
py_config="$(dirname "$base_python")/python3-config"
[ -x "$py_config" ] || py_config="$(command -v python3-config)"
cflags="$("$py_config" --includes)"
ldflags="$("$py_config" --ldflags --embed)"
libdir="$("$base_python" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
soname="$("$base_python" -c 'import sysconfig; print(sysconfig.get_config_var("INSTSONAME"))')"
if [ ! -f "$libdir/$soname" ]; then
    echo "build.sh: $base_python has no shared libpython ($libdir/$soname); rebuild Python with" \
         "--enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared)" >&2
    exit 1
fi
