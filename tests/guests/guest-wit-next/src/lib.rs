//! Test cartridge built against `gearhost:cartridge@0.2.0`, a contract
//! version the host does not speak. It uses wit-bindgen directly (the SDK is
//! pinned to 0.1.x); its hooks are trivial because the host must refuse the
//! component before running any of them.

#[allow(unsafe_code, missing_docs, missing_debug_implementations, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "cartridge",
        path: "wit",
    });

    use exports::gearhost::cartridge::hooks::{Guest, HookError};
    use gearhost::cartridge::host;
    use gearhost::cartridge::types::LogLevel;

    struct WitNext;

    impl Guest for WitNext {
        fn build() -> Result<(), HookError> {
            host::log(LogLevel::Info, "build: a 0.2 cartridge ran");
            Ok(())
        }

        fn start() -> Result<(), HookError> {
            Ok(())
        }

        fn stop() -> Result<(), HookError> {
            Ok(())
        }

        fn control(action: String, _args: Vec<String>) -> Result<String, HookError> {
            Ok(action)
        }
    }

    export!(WitNext);
}
