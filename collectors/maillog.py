def build(config):
    return []
