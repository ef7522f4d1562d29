import os
import tempfile

data_path = os.path.join(tempfile.gettempdir(), 'omost-fake-webui')
models_path = os.path.join(data_path, 'models')
script_path = data_path
