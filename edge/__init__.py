# The meter's firmware (MicroPython). See edge/README.md.


def release(name):
    """Forget the imported module `name` (and its parent package's
    attribute), so that its functions and globals are freed once nothing
    else holds them. Frozen into a board's image a module's code costs no
    RAM, but its function objects and globals do (~50 bytes a function):
    code needed only at boot or for a console command is released after
    it and imported again, cheaply, when next needed."""
    import sys

    sys.modules.pop(name, None)
    dot = name.rfind(".")
    parent = sys.modules.get(name[:dot])
    if parent is not None and name[dot + 1:] in parent.__dict__:
        delattr(parent, name[dot + 1:])
