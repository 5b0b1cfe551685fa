//! Test component without the cartridge `hooks` export: it exports `run`
//! and nothing else, so the host must refuse it as a cartridge.

#[allow(unsafe_code, missing_docs, missing_debug_implementations, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        world: "no-hooks",
        path: "wit",
    });

    struct NoHooks;

    impl Guest for NoHooks {
        fn run() {}
    }

    export!(NoHooks);
}
