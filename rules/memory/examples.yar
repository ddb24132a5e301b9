// Example rules for `pooltagscan scan DUMP --yara rules/memory`. Each hit is reported with
// the pool allocation (tag, address, offset) that holds it, so these show which pool tags
// carry file paths, PE images or offensive-tool strings in a memory image.

rule Device_Path_In_Pool
{
    meta:
        description = "NT device path (UTF-16), as held by file objects and name caches"
    strings:
        $vol = "\\Device\\HarddiskVolume" wide
        $mup = "\\Device\\Mup\\" wide
    condition:
        any of them
}

rule PE_Image_In_Pool
{
    meta:
        description = "DOS stub of a PE image: a driver or payload copied into pool memory"
    strings:
        $stub = "This program cannot be run in DOS mode"
    condition:
        $stub
}

rule Credential_Tool_Strings
{
    meta:
        description = "command words of well-known credential dumping tools"
    strings:
        $a = "sekurlsa::" ascii wide nocase
        $b = "lsadump::" ascii wide nocase
        $c = "kerberos::ptt" ascii wide nocase
    condition:
        any of them
}
