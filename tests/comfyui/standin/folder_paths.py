"""ComfyUI's folder_paths as the nodes use it (tests only); tests point ``base`` at a temporary folder."""
import os

base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_unused")
models_dir = os.path.join(base, "models")
folder_names_and_paths = {}


def set_base(path):
    global base, models_dir
    base, models_dir = str(path), os.path.join(str(path), "models")
    folder_names_and_paths.clear()


def add_model_folder_path(name, path=None, is_default=False):
    folder_names_and_paths.setdefault(name, ([], set()))[0].append(path or os.path.join(models_dir, name))


def get_folder_paths(name):
    return list(folder_names_and_paths[name][0])


def get_filename_list(name):
    return sorted(f for p in get_folder_paths(name) if os.path.isdir(p) for f in os.listdir(p))


def get_full_path(name, filename):
    for p in get_folder_paths(name):
        if os.path.isfile(os.path.join(p, filename)):
            return os.path.join(p, filename)
    return None


def get_output_directory():
    return os.path.join(base, "output")
