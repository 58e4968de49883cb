pytest_plugins = ["engine.testkit"]
