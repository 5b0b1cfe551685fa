//! `gearhost-init`: pid 1 of a gear. Started only by the node through `gearhost-sandbox`, which
//! passes it a spec on fd 3 and reads its report from fd 4.

fn main() {
    gearhost_sandbox::helper::main()
}
