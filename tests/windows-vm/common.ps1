# Shared helpers of the hivetrack Windows VM kit. Dot-source it: . "$PSScriptRoot\common.ps1"
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$Kit = $PSScriptRoot
$Package = if ($env:HIVETRACK_PACKAGE) { $env:HIVETRACK_PACKAGE } else { Join-Path $Kit 'package' }
$Results = Join-Path $Kit 'results'
$State = Join-Path $Kit 'state.json'
$Exe = Join-Path $Package 'hivetrack.exe'
$Inf = Join-Path $Package 'hivetrack.inf'
New-Item -ItemType Directory -Force -Path $Results | Out-Null

function Assert-Admin {
    $id = [Security.Principal.WindowsIdentity]::GetCurrent()
    $p = New-Object Security.Principal.WindowsPrincipal($id)
    if (-not $p.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw 'Run this from an elevated PowerShell (Administrator).'
    }
}

function Get-KitState {
    if (Test-Path $State) { return Get-Content $State -Raw | ConvertFrom-Json }
    return [pscustomobject]@{ step = 'start' }
}

function Set-KitState([string]$Step) {
    [pscustomobject]@{ step = $Step; at = (Get-Date).ToString('o') } | ConvertTo-Json | Set-Content $State
}

function Write-Result([string]$Name, [bool]$Ok, [string]$Detail) {
    $line = '{0} {1}: {2}' -f ($(if ($Ok) { 'PASS' } else { 'FAIL' })), $Name, $Detail
    Write-Host $line
    Add-Content -Path (Join-Path $Results 'summary.txt') -Value $line
    if (-not $Ok) { $script:Failures++ }
}

# Runs a native command with its stderr merged into its output; the caller reads the exit
# code (.Code, and $LASTEXITCODE). Windows PowerShell 5.1 makes a native command's stderr line
# a terminating error under $ErrorActionPreference = 'Stop' (Learn, "Differences between
# Windows PowerShell 5.1 and PowerShell": from 7.1 "the runtime no longer applies
# $ErrorActionPreference if the ErrorRecord comes from a native command"); reg.exe, sc.exe and
# hivetrack.exe write their failures there, some of them expected (a `reg unload` of a held
# hive). So the preference is 'Continue' while one runs (found in review: step 3 stopped at
# its first `reg delete` of a key that did not exist yet).
function Invoke-Native([scriptblock]$Command) {
    $ErrorActionPreference = 'Continue'
    $out = & $Command 2>&1 | ForEach-Object { "$_" }
    return [pscustomobject]@{ Code = $LASTEXITCODE; Text = ($out -join "`n") }
}

function Invoke-Hivetrack([string[]]$Arguments) {
    return Invoke-Native { & $Exe @Arguments }
}

# A test hive of the kit's own: HKCU\Software\<Name> with the subkey <Subkey> is saved to a
# hive file under %TEMP%\hivetrack-kit, deleted, and the file loaded as HKU\<Name>. Returns
# whether the load succeeded (steps 3, 3b and 3d).
function New-TestHive([string]$Name, [string]$Subkey) {
    $work = Join-Path $env:TEMP 'hivetrack-kit'
    New-Item -ItemType Directory -Force -Path $work | Out-Null
    $file = Join-Path $work "$Name.hiv"
    Invoke-Native { reg delete "HKCU\Software\$Name" /f } | Out-Null
    reg add "HKCU\Software\$Name\$Subkey" /f | Out-Null
    Remove-Item $file -ErrorAction SilentlyContinue
    reg save "HKCU\Software\$Name" $file /y | Out-Null
    reg delete "HKCU\Software\$Name" /f | Out-Null
    reg load "HKU\$Name" $file | Out-Null
    return ($LASTEXITCODE -eq 0)
}
