import os
import tempfile

# One data folder per test process: /tmp is shared, and a presets.json left by another run would change the
# settings' defaults (modules/paths.py: data_path is the WebUI's --data-dir).
data_path = tempfile.mkdtemp(prefix='omost-fake-webui-')
models_path = os.path.join(data_path, 'models')
script_path = data_path
